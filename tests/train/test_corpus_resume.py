"""Kill/resume of the corpus trainer (token2mel through ``python -m train``, test-size flow via ``--set``): a run
SIGKILLed from outside mid-run, then rerun with the same command, ends bit-exact with the uninterrupted run and
with the same metrics rows; an incompatible rerun leaves the run byte-identical."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmjax.data.corpus import DEFAULT_CORPUS
from train.metrics import read_metrics

from tests.train.corpus_helpers import micro_corpus

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The test-size flow of corpus_helpers.SMALL_FLOW, as --set overrides of the token2mel tiny preset.
TINY = [
    "model.flow.encoder.input_size=32", "model.flow.encoder.output_size=32", "model.flow.encoder.heads=2",
    "model.flow.encoder.linear_units=64", "model.flow.encoder.num_blocks=1", "model.flow.encoder.num_up_blocks=1",
    "model.flow.encoder.lookahead_channels=32", "model.flow.estimator.channels=32", "model.flow.estimator.n_blocks=1",
    "model.flow.estimator.num_mid_blocks=1", "model.flow.estimator.num_heads=2", "model.flow.estimator.head_dim=16",
    "train.batch_size=4", "data.buckets=(24,)", "data.eval_sentences=1", "data.sampler.n_steps=1",
    "data.griffin_lim_iters=2", "optim.warmup_steps=2", "train.eval_every=0",
    "train.steps=12", "train.ckpt_every=4", "train.log_every=2", "train.keep_checkpoints=5",
]


def _env(cache) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # the suite's shared compilation cache when there is one (tests/conftest.py), else this test's own
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _command(workdir, corpus, *extra) -> list[str]:
    sets = [a for o in TINY + [f"data.corpus={corpus}", *extra] for a in ("--set", o)]
    return [sys.executable, "-m", "train", "--config", "token2mel", "--workdir", str(workdir), "--no-progress", *sets]


def _state(workdir, step) -> list[np.ndarray]:
    manager = ocp.CheckpointManager(pathlib.Path(workdir, "checkpoints").resolve(),
                                    options=ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False),
                                    item_names=("state", "meta"))
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    finally:
        manager.close()
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def _train_rows(workdir) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"] if "grad_norm" in r else None)
            for r in read_metrics(pathlib.Path(workdir) / "metrics.jsonl") if r["kind"] == "train"]


def _snapshot(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_token2mel_sigkill_mid_run_then_rerun_is_bit_exact(tmp_path):
    corpus = micro_corpus(tmp_path / "corpus")
    shutil.copy(DEFAULT_CORPUS / "tokenizer.npz", corpus / "tokenizer.npz")  # the evaluation's scorer reads it
    env = _env(tmp_path / "jax_cache")
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    done = subprocess.run(_command(ref, corpus), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 12/12 (scratch, started at 0)" in done.stdout

    # The same command, SIGKILLed from outside as soon as the step-4 checkpoint is committed (mid-run: the next
    # steps, metrics appends and the step-8 save are in flight at an arbitrary point).
    proc = subprocess.Popen(_command(killed, corpus), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "4").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "done.json").exists(), "the run finished before the kill: nothing was tested"

    resumed = subprocess.run(_command(killed, corpus), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step 12/12 (workdir, started at " in resumed.stdout
    started = int(resumed.stdout.split("started at ")[1].split(")")[0])
    assert started in (4, 8)  # the newest committed checkpoint when the kill came
    ref_state, new_state = _state(ref, 12), _state(killed, 12)
    assert len(ref_state) == len(new_state)
    assert all(np.array_equal(a, b) for a, b in zip(ref_state, new_state))  # params, Adam, EMA, step: bit-exact
    assert _train_rows(killed) == _train_rows(ref)  # the same loss trajectory; no duplicated or missing rows
    evals = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals == [12]

    # A rerun that changes the model stops before writing: the finished run stays byte-identical.
    before = _snapshot(killed)
    changed = subprocess.run(_command(killed, corpus, "model.flow.estimator.channels=16"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "model.flow.estimator.channels: 32 in the run, 16 now" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert _snapshot(killed) == before
