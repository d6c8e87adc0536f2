"""The train step and the loop in-process: overfitting, checkpoint round trip, bf16, NaN/inf, bad data, compiles."""

from __future__ import annotations

import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.checkpoint import Checkpointer
from train.loop import MAX_CONSECUTIVE_SKIPS, _BatchGuard, run
from train.metrics import NonFiniteError, read_metrics
from train.optim import make_optimizer, make_schedule
from train.sharding import make_mesh, shard_batch, state_shardings
from train.state import abstract_state, create_state
from train.step import jit_train_step, make_train_step
from train.experiments import build  # noqa: E402


def _tree_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _setup(cfg, compute_dtype="float32"):
    exp = build(cfg)
    opt = make_optimizer(cfg.optim, cfg.train.steps)
    mesh = make_mesh(1)
    abstract = abstract_state(exp.init_params, opt, jax.random.key(0))
    shardings = state_shardings(abstract, mesh)
    step = jit_train_step(make_train_step(exp.loss_fn, opt, make_schedule(cfg.optim, cfg.train.steps),
                                          ema_decay=cfg.optim.ema_decay, compute_dtype=compute_dtype), shardings, mesh)
    state = create_state(exp.init_params, opt, jax.random.key(0), shardings)
    batches = [shard_batch(b, mesh) for b, _ in itertools.islice(exp.train_batches(0, 0), 5)]
    return exp, abstract, shardings, step, state, batches


def test_tiny_batch_overfits(toy_config, tmp_path):
    # One fixed batch of 4 (x0, x1) pairs, fresh t every step: the MLP memorises the 4 straight paths.
    # Measured: mean loss over the first 10 steps ~1.9, over the last 10 of 300 ~0.02 (a factor ~100).
    cfg = toy_config("model.hidden=128", "model.depth=3", "train.batch_size=4", "train.steps=300",
                    "train.overfit_batches=1", "train.log_every=10", "train.ckpt_every=300", "optim.lr=1e-2",
                    "optim.warmup_steps=10")
    run(build(cfg), tmp_path, progress=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses) == 30
    assert losses[-1] < losses[0] / 20, f"loss fell only from {losses[0]:.4f} to {losses[-1]:.4f} (want 20x)"


def test_checkpoint_round_trip_then_identical_next_step(toy_config, tmp_path):
    cfg = toy_config()
    _, abstract, shardings, step, state, batches = _setup(cfg)
    key = jax.random.key(1)
    for b in batches[:3]:
        state, _ = step(state, b, key)
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    ckpt.save(state, position=3, config={"note": "round trip"})
    ckpt.close()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restored = Checkpointer(tmp_path / "checkpoints").restore_latest(target)
    assert (restored.step, restored.position, restored.config) == (3, 3, {"note": "round trip"})
    assert _tree_equal(restored.state, state)
    a, ma = step(restored.state, batches[3], key)
    b, mb = step(state, batches[3], key)
    assert int(a.step) == 4 and _tree_equal(a, b) and float(ma["loss"]) == float(mb["loss"])  # bit-exact


def test_bf16_compute_keeps_fp32_params_and_step_folds_into_key(toy_config):
    cfg = toy_config()
    exp, _, shardings, step32, state, batches = _setup(cfg)
    opt, schedule = make_optimizer(cfg.optim, cfg.train.steps), make_schedule(cfg.optim, cfg.train.steps)
    step16 = jit_train_step(make_train_step(exp.loss_fn, opt, schedule, ema_decay=cfg.optim.ema_decay,
                                            compute_dtype="bfloat16"), shardings, make_mesh(1))
    key = jax.random.key(1)
    s16, m16 = step16(jax.tree.map(jnp.copy, state), batches[0], key)
    s32, m32 = step32(state, batches[0], key)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((s16.params, s16.opt_state, s16.ema_params))
               if jnp.issubdtype(x.dtype, jnp.floating))
    l32, l16 = float(m32["loss"]), float(m16["loss"])
    assert l16 != l32 and abs(l16 - l32) / l32 < 2e-2, (l32, l16)  # bf16 forward: different, within 2 %
    _, again = step32(s32, batches[0], key)  # same batch and key at the next step: new t draws
    assert float(again["loss"]) != l32


def test_nan_loss_stops_with_step_and_tensor(seq_experiment, tmp_path):
    exp = seq_experiment(poison_loss=3)  # the 4th batch (data position 3) -> update 4
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 4"):
        run(exp, tmp_path, progress=False)
    ck = Checkpointer(tmp_path / "checkpoints")
    assert ck.steps() == [2]  # the flush before the step-4 save raised: no NaN state was checkpointed


def test_nan_gradient_names_the_leaf(seq_experiment, tmp_path):
    exp = seq_experiment(poison_grad=2, train=dict(log_every=5, ckpt_every=10, steps=10))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 3 in 1 leaf/leaves: params/proj/kernel$"):
        run(exp, tmp_path, progress=False)


def test_compiles_once_per_batch_shape_and_skips_non_finite_batches(seq_experiment, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="train.loop"):
        result = run(seq_experiment(lengths=(8, 16, 8), bad=((2, "nan"),)), tmp_path, progress=False)
    assert result.step == 6 and result.compiles == 2
    assert sorted(s[-1] for s in result.batch_shapes) == [(4, 8, 2), (4, 16, 2)]
    assert [r["compiles"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"][-1] == 2
    assert result.skipped_batches == 1 and result.position == 7
    assert "skipping the batch at data position 2: non-finite values in x (1 values)" in caplog.text


def _guard_batch(rows=4, length=8, **change):
    batch = {"x": np.zeros((rows, length, 2), np.float32), "mask": np.ones((rows, length), np.float32)}
    return {**batch, **change}


def test_batch_guard_bounds_shapes_and_bad_runs():
    guard = _BatchGuard(batch_size=4, max_shapes=2)
    assert guard.accept(_guard_batch(length=8), 0) and guard.accept(_guard_batch(length=16), 1)
    assert guard.accept(_guard_batch(length=8), 2)
    with pytest.raises(ValueError, match=r"new batch shape beyond train.max_batch_shapes=2"):
        guard.accept(_guard_batch(length=24), 3)
    nan = _guard_batch(x=np.full((4, 8, 2), np.nan, np.float32))
    for p in range(MAX_CONSECUTIVE_SKIPS):
        assert not guard.accept(nan, 4 + p)
    assert guard.skipped == MAX_CONSECUTIVE_SKIPS
    with pytest.raises(ValueError, match="consecutive batches with non-finite values"):
        guard.accept(nan, 99)


@pytest.mark.parametrize("change,err,match", [
    (dict(mask=np.ones((4, 8), np.float64)), TypeError, r"batch leaf 'mask' at position 1: expected dtype float32 "
                                                       r"\(as in the first batch\), got float64"),
    (dict(x=np.zeros((3, 8, 2), np.float32)), ValueError,
     r"batch leaf 'x': expected the batch axis first with train.batch_size=4 rows, got shape \(3, 8, 2\)"),
    (dict(mask=[[1.0] * 8] * 4), TypeError, r"batch leaf 'mask/0/0': expected a numpy array, got float"),
    (dict(extra=np.zeros((4,), np.float32)), ValueError, "batch at position 1: expected the structure of the first"),
])
def test_batch_guard_rejects_malformed_batches(change, err, match):
    guard = _BatchGuard(batch_size=4, max_shapes=8)
    assert guard.accept(_guard_batch(), 0)
    with pytest.raises(err, match=match):
        guard.accept(_guard_batch(**change), 1)


def test_malformed_batch_stops_the_run_before_jit(seq_experiment, tmp_path):
    with pytest.raises(TypeError, match=r"batch leaf 'mask' at position 1: expected dtype float32"):
        run(seq_experiment(bad=((1, "dtype"),)), tmp_path, progress=False)
    assert Checkpointer(tmp_path / "checkpoints").steps() == []  # stopped at step 1, before any save


def test_batch_size_must_divide_over_devices(toy_config, tmp_path, monkeypatch):
    monkeypatch.setattr("train.loop.make_mesh", lambda n: type("M", (), {"shape": {"data": 3}})())
    with pytest.raises(ValueError, match="train.batch_size: expected a multiple of the 3 devices"):
        run(build(toy_config()), tmp_path, progress=False)
