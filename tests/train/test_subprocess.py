"""End to end in subprocesses: the CLI and its outputs, rerun = resume, SIGKILL then resume, 8 virtual devices."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train.metrics import read_metrics

pytestmark = pytest.mark.slow  # corpus training / subprocesses / full programs: the heaviest files (README, Tests)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "tests" / "train" / "drivers.py"
RUN = ["train.steps=30", "train.ckpt_every=10", "train.log_every=5", "train.keep_checkpoints=2",
       "train.eval_every=20"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **extra)
    return env


def _cache_env(cache_dir) -> dict:
    """A persistent compilation cache shared by this test's subprocesses (they compile identical programs)."""
    return _env(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _python(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env or _env(), capture_output=True,
                          text=True, timeout=300)


def _cli(workdir, overrides, env) -> subprocess.CompletedProcess:
    sets = [a for o in overrides for a in ("--set", o)]
    return _python("-m", "train", "--config", "train/configs/toy2d.py", "--preset", "tiny", "--workdir", workdir,
                   "--no-progress", *sets, env=env)


def _final_state(workdir, step):
    manager = ocp.CheckpointManager(pathlib.Path(workdir, "checkpoints").resolve(),
                                    options=ocp.CheckpointManagerOptions(read_only=True), item_names=("state", "meta"))
    try:
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    finally:
        manager.close()


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_cli_outputs_rerun_and_kill_resume(toy_overrides, tmp_path):
    overrides = toy_overrides + RUN
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    env = _cache_env(tmp_path / "jax_cache")

    # 1. the CLI, uninterrupted: every output file
    done = _cli(ref, overrides, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 30/30 (scratch, started at 0); train-step compilations: 1" in done.stdout
    assert sorted(p.name for p in (ref / "checkpoints").iterdir()) == ["20", "30"]  # keep_checkpoints=2
    assert json.loads((ref / "config.json").read_text())["train"]["steps"] == 30
    rows = read_metrics(ref / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [20, 30]
    assert all(np.isfinite(r["sliced_w2"]) and len(r["val_loss_per_t"]) == 10 for r in rows if r["kind"] == "eval")
    assert list((ref / "tb").glob("events.out.tfevents.*"))
    for png in ["loss_curve.png", "samples/step_000020.png", "samples/step_000030.png"]:
        assert (ref / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # 2. the same command again: resumes at the end and does nothing
    again = _cli(ref, overrides, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "step 30/30 (workdir, started at 30); train-step compilations: 0" in again.stdout
    assert read_metrics(ref / "metrics.jsonl") == rows

    # 3. SIGKILL right after step 20's (async) checkpoint save started, then the plain command again
    dead = _python(DRIVERS, "kill", killed, 20, *overrides, env=env)
    assert dead.returncode == -9, dead.stderr[-3000:]
    assert not (killed / "done.json").exists()
    resumed = _cli(killed, overrides, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("(workdir, started at 20)" in resumed.stdout) or ("(workdir, started at 10)" in resumed.stdout)
    assert "train-step compilations: 1;" in resumed.stdout  # the restored state did not force a recompile
    ref_state, new_state = _leaves(_final_state(ref, 30)), _leaves(_final_state(killed, 30))
    assert len(ref_state) == len(new_state)
    assert all(np.array_equal(a, b) for a, b in zip(ref_state, new_state))  # bit-exact: params, Adam, EMA, step
    train_rows = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "train"]
    assert train_rows(killed) == train_rows(ref)  # the same loss trajectory, no duplicated rows


def test_eight_virtual_devices_match_one_device(toy_overrides, tmp_path):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = _python(DRIVERS, "devices", tmp_path, *toy_overrides, "train.steps=5", "train.log_every=1",
                   "train.ckpt_every=5", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["single"]["sharded"] == [] and report["dp"]["sharded"] == []
    assert report["fsdp"]["sharded"] and report["fsdp"]["mu_sharded"] > 0  # FSDP really split params and Adam
    single = np.load(tmp_path / "single.npz")
    for name in ("dp", "fsdp"):
        np.testing.assert_allclose(report[name]["losses"], report["single"]["losses"], rtol=0, atol=1e-5)
        other = np.load(tmp_path / f"{name}.npz")
        for key in single.files:
            np.testing.assert_allclose(other[key], single[key], rtol=0, atol=1e-5, err_msg=f"{name} {key}")
