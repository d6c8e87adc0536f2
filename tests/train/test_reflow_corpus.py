"""The reflow experiment on the corpus: couplings carry their conditions, generation resumes exactly, and the
student's loss on the couplings falls. A micro teacher (random parameters of a test-size flow) on a micro corpus
(2 speakers x 6 short training + 1 validation utterances of the shipped corpus)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.reflow import GridT
from fmjax.samplers import classifier_free_guidance, sample
from fmjax.timesteps import time_grid
from train.config import apply_overrides
from train.configs import reflow
from train.loop import run
from train.metrics import read_metrics
from train.experiments import build  # noqa: E402
from train.experiments.reflow_couplings import COUPLING_KEYS

from tests.train.corpus_helpers import micro_corpus, micro_teacher

pytestmark = pytest.mark.slow  # corpus training / subprocesses / full programs: the heaviest files (README, Tests)

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(corpus dir, teacher workdir)``: the teacher's config.json and one checkpoint of random parameters."""
    corpus = micro_corpus(tmp_path_factory.mktemp("corpus"))
    teacher, params = micro_teacher(tmp_path_factory.mktemp("teacher"))
    return corpus, teacher


def micro(setup, *overrides):
    corpus, teacher = setup
    return apply_overrides(reflow.get_config("tiny"), [
        f"data.corpus={corpus}", "data.buckets=(24,)", "data.eval_sentences=2", "data.sampler.n_steps=2",
        "data.griffin_lim_iters=2", f"reflow.teacher={teacher}", "reflow.sampler.n_steps=4", "reflow.shard_size=4",
        "reflow.copies=2", "reflow.eval_steps=(2,)", "reflow.straightness_steps=2", "train.batch_size=4",
        "optim.warmup_steps=5", "train.eval_every=0", *overrides])


def test_couplings_carry_their_conditions(setup, tmp_path):
    exp = build(micro(setup, f"reflow.couplings={tmp_path}"))
    (group,) = exp.couplings("train", progress=False)
    assert group["x0"].shape == (24, 48, 80) and group["tokens"].shape == (24, 24)  # 2 copies x 12 utterances
    assert sorted(group["index"].tolist()) == sorted(list(range(12)) * 2)
    # prompts: the row's own ground-truth prefix of prompt_len frames, zeros after; some rows without
    utts = exp.corpus.train
    for row in range(24):
        u, p = utts[group["index"][row]], int(group["prompt_len"][row])
        np.testing.assert_array_equal(group["prompt"][row, :p], u.mel[:p])
        assert not group["prompt"][row, p:].any() and p <= int(0.3 * u.mel.shape[0])
        assert group["token_len"][row] == u.tokens.shape[0] and np.array_equal(group["spk"][row], u.spk)
    assert 0 < int((group["prompt_len"] > 0).sum()) < 24
    # regenerate rows from the stored x0 and conditions alone (other rows, other batch), with the sampler directly
    model, params = exp.model, exp.teacher_params
    rows = np.array([5, 0, 17])

    @jax.jit
    def regenerate(x0, tokens, token_len, spk, prompt):
        spks = model.apply(params, spk, method="speaker")
        mu, _ = model.apply(params, tokens, token_len, method="encode")
        mask = (jnp.arange(mu.shape[1])[None] < 2 * token_len[:, None]).astype(mu.dtype)
        velocity = classifier_free_guidance(lambda t, x, c: model.apply(params, x, c, t, method="estimate")[0], 0.7)
        return sample(velocity, x0, MelCond(mu, spks, prompt, mask), jnp.asarray(time_grid("cosine", 4)), "euler")[0]

    x1 = regenerate(*(group[k][rows] for k in ("x0", "tokens", "token_len", "spk", "prompt")))
    valid = group["mel_mask"][rows][..., None] > 0
    err = float(np.max(np.abs(np.where(valid, np.asarray(x1) - group["x1"][rows], 0.0))))
    assert err < 1e-4, err  # whole-model tolerance (measured 2.1e-6): 4 guided steps, rows batched unlike the shard


def test_generation_resumes_without_duplicating_or_losing_shards(setup, tmp_path):
    full = build(micro(setup, f"reflow.couplings={tmp_path / 'full'}"))
    full.couplings("train", progress=False)
    exp = build(micro(setup, f"reflow.couplings={tmp_path / 'resumed'}"))
    store, n = exp.store("train"), len(exp.plan("train"))
    assert n == 6  # 2 copies x 12 utterances / 4 per shard

    def killed(i):
        if i == 3:
            raise KeyboardInterrupt("simulated kill")
        return exp.make_shard("train", i)

    with pytest.raises(KeyboardInterrupt):
        store.generate(killed, n, exp.settings() | {"split": "train"}, progress=False)
    assert store.complete_shards() == [0, 1, 2]
    made = []
    original = exp.make_shard
    exp.make_shard = lambda split, i: made.append(i) or original(split, i)
    exp.couplings("train", progress=False)
    assert made == [3, 4, 5]  # only the missing shards
    assert store.complete_shards() == list(range(n))
    for i in range(n):
        a, b = full.store("train").load_shard(i), store.load_shard(i)
        assert sorted(a) == sorted(b) == sorted(COUPLING_KEYS)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"shard {i} {k}")


def test_student_loss_on_couplings_falls_and_report_is_written(setup, tmp_path):
    cfg = micro(setup, f"reflow.couplings={tmp_path / 'couplings'}", "train.steps=40", "train.log_every=10",
                "train.ckpt_every=40", "optim.lr=3e-3", "optim.end_lr_factor=1.0",
                "reflow.student_cfg=0.7")  # the teacher's guidance: teacher and student share compilations
    result = run(build(cfg), tmp_path / "student", progress=False)
    rows = read_metrics(tmp_path / "student" / "metrics.jsonl")
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 4 and result.compiles == 1
    # Mean train loss over 10 steps, first -> last, measured 0.326 -> 0.201 (a random-parameter teacher; the
    # student starts as the teacher). Want a fall of at least a quarter.
    assert losses[-1] < 0.75 * losses[0], losses
    (ev,) = [r for r in rows if r["kind"] == "eval"]
    for key in ("val_loss", "val_mel_l1", "straightness", "teacher_straightness", "val_mel_l1_steps2",
                "teacher_val_mel_l1_steps2"):
        assert np.isfinite(ev[key]), key
    report = (tmp_path / "student" / "reflow_report.json").read_text()
    assert '"teacher"' in report and '"student"' in report


def test_distillation_trains_on_the_grid_times(setup):
    exp = build(micro(setup, "reflow.distill_steps=2", "data.sampler.grid=linear"))
    assert exp.loss.t_sampler == GridT(2) and exp.loss.path.sigma_min == 0.0 and exp.loss.cfg_rate == 0.0


def test_bad_settings_raise(setup, tmp_path):
    with pytest.raises(ValueError, match="reflow.teacher: "):
        build(micro(setup, f"reflow.teacher={tmp_path}"))
    with pytest.raises(ValueError, match="data.sampler.grid: k-step distillation"):
        build(micro(setup, "reflow.distill_steps=1"))
    exp = build(micro(setup, "reflow.teacher="))  # builds (fresh parameters) but has no couplings
    with pytest.raises(ValueError, match="reflow.teacher"):
        next(exp.train_batches(0, 0))
    for item, match in (("reflow.sampler.n_steps=0", "n_steps"), ("reflow.eval_steps=(0,)", "reflow.eval_steps"),
                        ("reflow.sampler.grid=quadratic", "grid"), ("reflow.t_sampler=beta", "reflow:")):
        with pytest.raises(ValueError, match=match):
            apply_overrides(reflow.get_config("tiny"), [item])
