"""The meanflow experiment on a micro corpus with a micro teacher (random parameters of a test-size flow): the student
starts as the teacher, trains with the encoder and speaker layers frozen bit for bit, its loss falls, it is evaluated
at NFE 1 and 2 without CFG, and its workdir streams through the CLI's loader as a student; bad settings raise."""

from __future__ import annotations


import jax
import numpy as np
import pytest

from fmjax import meanflow
from fmjax.checkpoint import load_flow
from train.config import apply_overrides
from train.configs import meanflow as meanflow_config
from train.experiments import build
from train.loop import run
from train.metrics import read_metrics

from tests.train.corpus_helpers import SMALL_FLOW, micro_corpus, micro_teacher

pytestmark = pytest.mark.slow  # corpus training / subprocesses / full programs: the heaviest files (README, Tests)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(corpus dir, teacher workdir, teacher params)``: a token2mel config.json and one checkpoint of random
    parameters."""
    corpus = micro_corpus(tmp_path_factory.mktemp("corpus"))
    teacher, params = micro_teacher(tmp_path_factory.mktemp("teacher"))
    return corpus, teacher, params


def micro(setup, *overrides):
    corpus, teacher, _ = setup
    return apply_overrides(meanflow_config.get_config("tiny"), [
        f"data.corpus={corpus}", "data.buckets=(24,)", "data.eval_sentences=2", "data.griffin_lim_iters=2",
        f"meanflow.teacher={teacher}", "train.batch_size=4", "optim.warmup_steps=5", "train.eval_every=0",
        *overrides])


def _named(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_student_trains_with_frozen_encoder_and_is_evaluated_without_cfg(setup, tmp_path):
    _, _, teacher_params = setup
    cfg = micro(setup, "train.steps=30", "train.log_every=10", "train.ckpt_every=30", "optim.lr=3e-3",
                "optim.end_lr_factor=1.0")
    exp = build(cfg)
    assert meanflow.is_student(exp.model) and exp.config.model.flow == meanflow.student_config(SMALL_FLOW)
    result = run(exp, tmp_path / "student", progress=False)
    end = _named(result.state.params)
    teacher = _named(teacher_params)
    frozen = [k for k in teacher if "'decoder'" not in k]
    assert frozen and set(end) - set(teacher) == {k for k in end if "time_mlp_r" in k}
    for k in frozen:  # encoder, encoder_proj, input_embedding, spk_embed_affine_layer: bit for bit
        np.testing.assert_array_equal(end[k], teacher[k], err_msg=k)
    moved = [k for k in teacher if "'decoder'" in k and not np.array_equal(end[k], teacher[k])]
    assert len(moved) > 0.9 * len([k for k in teacher if "'decoder'" in k])  # the estimator trains
    assert any("time_mlp_r" in k and np.abs(end[k]).max() > 0 for k in end if "linear_2" in k)
    rows = read_metrics(tmp_path / "student" / "metrics.jsonl")
    mse = [r["mse"] for r in rows if r["kind"] == "train"]
    # the unweighted squared error of the MeanFlow target, mean over 10 steps, first -> last (a random teacher: the
    # student learns the data; the adaptive-weighted loss is ~1 by construction); want a fall of at least a tenth
    assert len(mse) == 3 and mse[-1] < 0.9 * mse[0], mse
    (ev,) = [r for r in rows if r["kind"] == "eval"]
    # (the micro corpus has no tokenizer.npz: no TER; the shipped corpus's runs log val_ter_steps<n> as well)
    for key in ("val_loss", "val_mel_l1", "val_mel_l1_steps1", "val_mel_l1_steps2", "val_mcd_steps1", "val_fd_steps1"):
        assert np.isfinite(ev[key]), key
    assert ev["val_mel_l1"] == ev["val_mel_l1_steps2"]  # data.sampler is the 2-step student sampler
    loaded = load_flow(tmp_path / "student")  # the CLI's loader: a student, from the run's model.flow
    assert meanflow.is_student(loaded.model)


def test_bad_settings_raise(setup, tmp_path):
    with pytest.raises(ValueError, match="optim.weight_decay: a frozen encoder"):
        build(micro(setup, "optim.weight_decay=0.01"))
    with pytest.raises(ValueError, match="data.sampler: a MeanFlow student is evaluated with the meanflow solver"):
        build(micro(setup, "data.sampler.cfg_weight=0.7"))
    with pytest.raises(ValueError, match="meanflow.neq_ratio|neq_ratio"):
        micro(setup, "meanflow.neq_ratio=2.0")
    with pytest.raises(FileNotFoundError, match="meanflow.teacher: "):
        build(micro(setup, f"meanflow.teacher={tmp_path}"))
