"""The corpus domain of the ablation harness: the same seeds give the same table (models reloaded from their
workdirs), an untrained model ranks worse than a trained one on every metric, the CLI writes its outputs."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from fmjax import ablate
from train import ablate_corpus
from fmjax.timesteps import LogitNormal
from train.ablate_corpus import CorpusDomain, Trained
from train.configs import token2mel

from tests.train.corpus_helpers import SMALL_FLOW, micro_corpus

pytestmark = pytest.mark.slow  # corpus training / subprocesses / full programs: the heaviest files (README, Tests)

# A test-size flow on a micro corpus (2 speakers x 4 training + 1 validation utterances cut to 12..20 tokens).
GET_CONFIG = token2mel.get_config
SMALL = ["model.chunk_prob=0.0", "train.batch_size=4", "data.buckets=(24,)", "data.eval_sentences=2", "optim.lr=3e-3",
         "optim.ema_decay=0.5", "train.eval_every=0", "train.log_every=10"]


def small_base():
    """token2mel's tiny preset with the test-size flow."""
    cfg = GET_CONFIG("tiny")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, flow=SMALL_FLOW))


SPEC = ablate.AblationSpec(t_samplers=("logit_normal:m=0,s=1",), grids=("linear",), solvers=("euler",),
                           steps=(1, 4), cfg_weights=(0.7,), seeds=(0,))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return micro_corpus(tmp_path_factory.mktemp("corpus"), n_train=4, n_valid=1)


def domain(workdir, corpus, steps: int) -> CorpusDomain:
    return CorpusDomain(str(workdir), base=small_base(), overrides=overrides(corpus, steps), val_repeats=2)


def overrides(corpus, steps: int) -> tuple[str, ...]:
    return (*SMALL, f"data.corpus={corpus}", f"train.steps={steps}", f"train.ckpt_every={steps}",
            f"optim.warmup_steps={min(steps - 1, 2)}")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """``(workdir, rows)``: the spec run on a model trained for 30 steps."""
    workdir = tmp_path_factory.mktemp("models")
    return workdir, ablate.run_ablation(domain(workdir, corpus, 30), SPEC, progress=False)


class Untrained(CorpusDomain):
    """The same domain evaluating the initial parameters (a known-worse model)."""

    def train(self, t_sampler, seed):
        exp = self.experiment(t_sampler, seed)
        params = jax.jit(exp.init_params)(jax.random.key(seed))
        return Trained(exp, params, self.validate(exp, params, seed))


def test_same_seeds_give_the_same_table(corpus, trained):
    workdir, rows = trained
    assert [(r["t_sampler"], r["steps"]) for r in rows] == [("logit_normal:m=0,s=1", 1), ("logit_normal:m=0,s=1", 4)]
    (run_dir,) = workdir.iterdir()
    assert run_dir.name.startswith("LogitNormal_") and run_dir.name.endswith("m_0.0_s_1.0_seed0")
    again = ablate.run_ablation(domain(workdir, corpus, 30), SPEC, progress=False)  # reloaded from the workdir
    assert [sorted(r) for r in again] == [sorted(r) for r in rows]
    for a, b in zip(again, rows):
        np.testing.assert_equal(a, b)  # same noise, same validation draws (NaN: an empty t-bin at this size)
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("mel_l1", "mcd", "vloss"))


def test_the_training_t_sampler_reaches_the_loss(corpus, tmp_path):
    exp = domain(tmp_path, corpus, 30).experiment(LogitNormal(0.5, 2.0), 3)
    assert exp.loss.t_sampler == LogitNormal(0.5, 2.0) and exp.config.train.seed == 3


def test_an_untrained_model_ranks_worse(corpus, trained, tmp_path):
    _, rows = trained
    untrained = Untrained(str(tmp_path), base=small_base(), overrides=overrides(corpus, 30), val_repeats=2)
    for bad, good in zip(ablate.run_ablation(untrained, SPEC, progress=False), rows):
        assert (bad["t_sampler"], bad["steps"]) == (good["t_sampler"], good["steps"])
        # measured (trained 30 steps vs initial parameters, 1 and 4 steps): mel L1 2.95 vs 4.04, MCD 89.4 vs 96.4 /
        # 95.8, validation loss 13.4 vs 21.3
        for metric in ("mel_l1", "mcd", "vloss"):
            assert bad[metric] > good[metric], (metric, good, bad)


def test_cli_writes_tables_and_plots(corpus, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(token2mel, "get_config", lambda preset: small_base())  # the preset at test size
    args = ["--out", str(tmp_path), "--workdir", str(trained[0]), "--t-samplers", "logit_normal:m=0,s=1",
            "--grids", "cosine",
            "--steps", "1", "--seeds", "0", "--val-repeats", "1"]  # 1 step: a compilation the fixture made
    for item in overrides(corpus, 30):
        args += ["--set", item]
    assert ablate_corpus.main(args) == 0  # the trained model is reused
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["spec"]["cfg_weights"] == [0.7] and len(payload["rows"]) == 1
    assert {"mel_l1_mean", "mcd_std", "vloss_t9_mean"} <= set(payload["summary"][0])
    for png in ("mel_l1_vs_nfe.png", "mcd_vs_nfe.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mel_l1=" in capsys.readouterr().out


def test_bad_settings_raise_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        CorpusDomain(str(tmp_path), overrides=("train.stepz=3",))
    with pytest.raises(ValueError, match="val_repeats"):
        CorpusDomain(str(tmp_path), val_repeats=0)
