"""The ablation harness: deterministic tables, a known-worse configuration ranks worse, outputs written."""

import json

import numpy as np
import pytest

from fmjax import ablate


def test_harness_is_deterministic_and_ranks_a_worse_configuration_worse(tmp_path):
    spec = ablate.AblationSpec(t_samplers=("uniform",), grids=("linear",), solvers=("euler",), steps=(1, 8),
                               seeds=(0, 1))
    domain = ablate.ToyDomain(train_steps=200, n_eval=1000)
    rows = ablate.run_ablation(domain, spec, progress=False)
    again = ablate.run_ablation(domain, spec, progress=False)
    assert rows == again  # same seeds, same table
    assert len(rows) == 4
    by = {(r["steps"], r["seed"]): r["sw2"] for r in rows}
    for seed in (0, 1):  # one Euler step is known to be worse than eight on a curved 1-rectified flow
        assert by[(1, seed)] > by[(8, seed)]
    under = ablate.run_ablation(ablate.ToyDomain(train_steps=3, n_eval=1000), spec, progress=False)
    assert np.mean([r["sw2"] for r in under if r["steps"] == 8]) > np.mean([by[(8, s)] for s in (0, 1)])

    summary = ablate.summarize(rows)
    cell = next(r for r in summary if r["steps"] == 8)
    vals = [by[(8, 0)], by[(8, 1)]]
    assert cell["sw2_mean"] == pytest.approx(np.mean(vals)) and cell["sw2_std"] == pytest.approx(np.std(vals, ddof=1))
    paths = ablate.write_results(rows, tmp_path, spec)
    assert json.loads(paths["json"].read_text())["summary"] == summary
    assert ablate.plot_quality_vs_nfe(rows, tmp_path / "q.png").stat().st_size > 1000


def test_conditional_domain_with_guidance_runs():
    spec = ablate.AblationSpec(t_samplers=("logit_normal:m=0,s=1",), grids=("sway:s=-0.5",), solvers=("heun",),
                               steps=(2,), cfg_weights=(0.0, 1.0), seeds=(0,))
    rows = ablate.run_ablation(ablate.ToyDomain(train_steps=50, n_eval=400, conditional=True), spec, progress=False)
    assert [r["cfg"] for r in rows] == [0.0, 1.0] and all(r["nfe"] == 4 for r in rows)
    assert rows[0]["sw2"] != rows[1]["sw2"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t_samplers=("beta",)), "t_samplers"),
        (dict(grids=("quadratic",)), "grids"),
        (dict(solvers=("dopri",)), "solver"),
        (dict(steps=(0,)), "steps"),
        (dict(t_samplers=("logit_normal:m=zero",)), "key=number"),
    ],
)
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ablate.AblationSpec(**kwargs)


def test_guidance_needs_a_conditional_domain():
    with pytest.raises(ValueError, match="conditional"):
        ablate.run_ablation(ablate.ToyDomain(), ablate.AblationSpec(cfg_weights=(1.0,)), progress=False)
