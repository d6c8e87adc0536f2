"""A rerun never destroys a run: incompatible configs and states stop before writing, --reset archives, a torn
metrics line resumes with a warning and no duplicates, Ctrl-C says where to resume."""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import pytest

from fmjax.checkpoint import Checkpointer, IncompatibleCheckpointError
from train.__main__ import main
from train.loop import TrainingInterrupted, run
from train.metrics import read_metrics
from train.resume import RESUME_SAFE_KEYS, IncompatibleRunError, RunError


def _snapshot(root: pathlib.Path) -> dict[str, str]:
    """Every file under ``root`` by relative path -> md5 of its bytes."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _cli(workdir, overrides) -> int:
    return main(["--config", "toy2d", "--workdir", str(workdir), "--no-progress",
                 *[a for o in overrides for a in ("--set", o)]])


@pytest.mark.slow
def test_issue_reproduction_changed_clip_norm_stops_before_writing(toy_overrides, tmp_path, capsys):
    """The issue's commands (toy2d, checkpoints every 4 steps, 12 then 16 steps, clip_norm 1 -> 0)."""
    workdir = tmp_path / "W"
    assert _cli(workdir, toy_overrides) == 0
    before = _snapshot(workdir)
    assert {"config.json", "metrics.jsonl", "done.json"} <= set(before) and any("checkpoints/12" in k for k in before)
    capsys.readouterr()
    for change, key in (("optim.clip_norm=0", "optim.clip_norm"), ("model.hidden=16", "model.hidden")):
        assert _cli(workdir, toy_overrides + ["train.steps=16", change]) == 2
        err = capsys.readouterr().err
        assert key in err and "--set " + key in err and "--reset" in err and "--init-from" in err, err
        assert "train.steps" not in err.split("resume-safe settings")[0]  # the allowed change is not blamed
        assert _snapshot(workdir) == before  # byte-identical: checkpoints, metrics, config, done marker
    assert not (workdir / "corrupt_checkpoints").exists()


def test_resume_safe_change_resumes_and_is_recorded(seq_experiment, tmp_path, caplog):
    first = run(seq_experiment(lengths=(8,), train=dict(steps=4)), tmp_path, progress=False)
    config_before = (tmp_path / "config.json").read_bytes()
    with caplog.at_level(logging.WARNING):
        second = run(seq_experiment(lengths=(8,), train=dict(steps=6, log_every=1, keep_checkpoints=4)), tmp_path,
                     progress=False)
    assert first.step == 4 and second.source == "workdir" and second.start_step == 4 and second.step == 6
    assert "train.steps 4 -> 6" in caplog.text and "train.log_every 5 -> 1" in caplog.text
    assert (tmp_path / "config.json").read_bytes() == config_before  # written once, by the first start
    resumes = [json.loads(line) for line in (tmp_path / "resumes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["source"]) for r in resumes] == [(0, "scratch"), (4, "workdir")]
    assert resumes[1]["changes"]["train.steps"] == [4, 6]
    assert {"train.steps", "train.log_every", "train.eval_every", "train.ckpt_every"} <= set(RESUME_SAFE_KEYS)


def test_changed_state_structure_is_incompatible_not_corrupt(seq_experiment, tmp_path):
    """Same config, other code: the saved tree differs -> an error naming the leaves; nothing moved."""
    run(seq_experiment(lengths=(8,), train=dict(steps=2)), tmp_path, progress=False)
    before = _snapshot(tmp_path)
    wider = {"params": {"w": jax.ShapeDtypeStruct((3, 3), jnp.float32)}, "step": jax.ShapeDtypeStruct((), jnp.int32)}
    reader = Checkpointer(tmp_path / "checkpoints", read_only=True)
    with pytest.raises(IncompatibleCheckpointError, match=r"missing leaves \(1\): params/w"):
        reader.restore_latest(wider)
    reader.close()
    assert _snapshot(tmp_path) == before

    exp = seq_experiment(lengths=(8,), train=dict(steps=2))
    exp.init_params = lambda key: {"params": {"proj": {"kernel": jnp.zeros((8, 3))}}}
    with pytest.raises(IncompatibleRunError, match="another structure") as info:
        run(exp, tmp_path, progress=False)
    assert "--reset" in str(info.value) and "nothing was written" in str(info.value)
    assert _snapshot(tmp_path) == before


def test_reset_archives_the_old_run_and_starts_fresh(seq_experiment, tmp_path):
    run(seq_experiment(lengths=(8,), train=dict(steps=2)), tmp_path, progress=False)
    before = _snapshot(tmp_path)
    changed = seq_experiment(lengths=(8, 16), train=dict(steps=2))  # data.lengths: not resume-safe
    with pytest.raises(IncompatibleRunError, match=r"data.lengths: \[8\] in the run, \[8, 16\] now"):
        run(changed, tmp_path, progress=False)
    result = run(changed, tmp_path, progress=False, reset=True)
    assert result.source == "scratch" and result.step == 2
    (archive,) = (tmp_path / "archive").iterdir()
    assert _snapshot(archive) == before  # the old run, byte for byte
    assert json.loads((tmp_path / "config.json").read_text())["data"]["lengths"] == [8, 16]


def test_used_workdir_without_checkpoint_checks_its_config(seq_experiment, tmp_path, caplog):
    """Killed before the first checkpoint: the same config restarts (old rows kept aside), another one stops."""
    run(seq_experiment(lengths=(8,), train=dict(steps=2, ckpt_every=2)), tmp_path, progress=False)
    for step in (tmp_path / "checkpoints").iterdir():  # as if the process died before any save committed
        step.rename(tmp_path / f"gone-{step.name}")
    rows_before = read_metrics(tmp_path / "metrics.jsonl")
    with pytest.raises(IncompatibleRunError, match="its config.json"):
        run(seq_experiment(lengths=(16,), train=dict(steps=2)), tmp_path, progress=False)
    with caplog.at_level(logging.WARNING):
        again = run(seq_experiment(lengths=(8,), train=dict(steps=2, ckpt_every=2)), tmp_path, progress=False)
    assert again.source == "scratch" and "holds no usable checkpoint" in caplog.text
    assert read_metrics(tmp_path / "metrics.discarded.jsonl") == [r for r in rows_before if r["step"] > 0]
    for step in (tmp_path / "checkpoints").iterdir():
        step.rename(tmp_path / f"gone-again-{step.name}")
    (tmp_path / "config.json").unlink()
    with pytest.raises(RunError, match="no config.json"):
        run(seq_experiment(lengths=(8,), train=dict(steps=2)), tmp_path, progress=False)


def test_torn_metrics_line_resumes_with_a_warning_and_no_duplicates(seq_experiment, tmp_path, caplog):
    train = dict(steps=6, log_every=1, ckpt_every=2)
    reference = run(seq_experiment(lengths=(8,), train=train), tmp_path / "ref", progress=False)
    ref_rows = [(r["step"], r["kind"], r.get("loss")) for r in read_metrics(tmp_path / "ref" / "metrics.jsonl")]

    def kill(step, state):  # stops after step 4 and its checkpoint, as a kill would
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        run(seq_experiment(lengths=(8,), train=train), tmp_path / "run", progress=False, callbacks=[kill])
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:  # rows of an interrupted step 5 and a torn append, as a kill leaves them
        f.write(json.dumps({"step": 5, "kind": "train", "loss": 9.0}) + "\n" + '{"step": 6, "kind": "tr')
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_metrics(metrics)][-1] == 5  # readers skip the torn line ...
        assert "torn last line" in caplog.text
        resumed = run(seq_experiment(lengths=(8,), train=train), tmp_path / "run", progress=False)
    assert resumed.start_step == 4 and resumed.step == 6
    assert "1 torn/unparsable line(s)" in caplog.text
    rows = [(r["step"], r["kind"], r.get("loss")) for r in read_metrics(metrics)]
    train_steps = [s for s, kind, _ in rows if kind == "train"]
    assert train_steps == sorted(set(train_steps)) == [1, 2, 3, 4, 5, 6]  # no duplicates, no gap
    assert [r for r in rows if r[1] == "train"] == [r for r in ref_rows if r[1] == "train"]  # same losses
    assert metrics.read_text().endswith("\n")
    discarded = (tmp_path / "run" / "metrics.discarded.jsonl").read_text().splitlines()
    assert discarded == [json.dumps({"step": 5, "kind": "train", "loss": 9.0}), '{"step": 6, "kind": "tr']
    assert jax.tree.leaves(resumed.state.params)[0].shape == jax.tree.leaves(reference.state.params)[0].shape


def test_ctrl_c_reports_the_step_and_the_checkpoint(seq_experiment, tmp_path, monkeypatch, capsys):
    def stop(step, state):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        run(seq_experiment(lengths=(8,)), tmp_path, progress=False, callbacks=[stop])
    assert (info.value.step, info.value.checkpoint) == (3, 2)
    assert isinstance(info.value, KeyboardInterrupt)

    import train.loop

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(7, 5)

    monkeypatch.setattr(train.loop, "run", interrupted)
    assert _cli(tmp_path / "cli", ["train.steps=12", "optim.warmup_steps=2", "model.hidden=8"]) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 7; rerun the same command to resume (from the checkpoint at step 5)" in err
    assert "Traceback" not in err


def test_a_setting_added_later_resumes_old_runs_only_at_its_old_behaviour(tmp_path):
    """A run saved before ``model.prior_weight`` existed resumes when the key has the value that reproduces it (0);
    any other value is a difference that names the key and the absent old value."""
    from train.resume import ADDED_KEYS, check_resume

    assert ADDED_KEYS["model.prior_weight"] == 0.0
    saved = {"model": {"mel_norm": "none"}, "train": {"steps": 10}}
    assert check_resume(tmp_path, saved, {"model": {"mel_norm": "none", "prior_weight": 0.0}, "train": {"steps": 10}},
                        step=4) == {}
    with pytest.raises(IncompatibleRunError, match=r"model.prior_weight: <absent> in the run, 1.0 now"):
        check_resume(tmp_path, saved, {"model": {"mel_norm": "none", "prior_weight": 1.0}, "train": {"steps": 10}},
                     step=4)
    with pytest.raises(IncompatibleRunError, match=r"model.other: <absent> in the run, 0.0 now"):
        check_resume(tmp_path, saved, {"model": {"mel_norm": "none", "other": 0.0}, "train": {"steps": 10}}, step=4)
