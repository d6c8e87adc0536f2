"""The training loop: resume, batches checked on the host, the jitted step, metrics, evaluation, checkpoints.

Where the starting state comes from (the first that applies):

1. **workdir** -- the newest verified checkpoint in ``<workdir>/checkpoints`` (state and data position), so
   rerunning the same command after a crash or preemption continues exactly where the run stopped;
2. **init-from** -- ``train.init_from`` names another run (workdir or checkpoint directory): its parameters
   start a fresh state (step 0, new optimizer state, EMA = params);
3. **scratch** -- fresh parameters from ``train.seed``.

Bad data never reaches jit: every batch is checked in Python first. A batch whose structure, leaf types,
dtypes or batch axis differ from the first batch raises ``TypeError``/``ValueError`` naming the leaf; a batch
with NaN/inf values is **skipped with a logged warning** (counted in the result; more than
``MAX_CONSECUTIVE_SKIPS`` in a row raises); a batch shape beyond ``train.max_batch_shapes`` distinct ones
raises, which bounds the train step's compilations (one per distinct batch shape).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import pathlib
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from train.checkpoint import Checkpointer, restore_params
from train.config import config_to_dict, write_config
from train.experiment import Experiment
from train.files import atomic_write_text
from train.metrics import MetricsWriter, read_metrics
from train.optim import make_optimizer, make_schedule
from train.plots import plot_loss_curve
from train.sharding import DATA_AXIS, make_mesh, shard_batch, state_shardings
from train.state import TrainState, abstract_state, create_state, state_from_params
from train.step import jit_eval_step, jit_train_step, leaf_names, make_eval_step, make_train_step

__all__ = ["RunResult", "run", "MAX_CONSECUTIVE_SKIPS", "T_BINS"]

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 10
T_BINS = 10  # flow-time bins of the validation loss curve


@dataclasses.dataclass
class RunResult:
    """What :func:`run` leaves behind.

    Attributes:
      state: the final :class:`TrainState` (on device).
      step: its step; position: the data position after it.
      start_step: the step the run started from (0 unless resumed); source: ``workdir``, ``init_from`` or ``scratch``.
      compiles: train-step compilations in this process; batch_shapes: the distinct batch shapes seen.
      skipped_batches: batches skipped for NaN/inf values.
      outputs: files written by the final evaluation (samples, loss curve).
    """

    state: TrainState
    step: int
    position: int
    start_step: int
    source: str
    compiles: int
    batch_shapes: list
    skipped_batches: int
    outputs: list


class _BatchGuard:
    """Host-side batch validation against the first batch (see the module docstring)."""

    def __init__(self, batch_size: int, max_shapes: int):
        self.batch_size, self.max_shapes = batch_size, max_shapes
        self.treedef, self.dtypes, self.shapes = None, None, []
        self.skipped = self._run = 0

    def accept(self, batch, position: int, *, train: bool = True) -> bool:
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        names = leaf_names(batch)
        for name, x in zip(names, leaves):
            if not isinstance(x, np.ndarray):
                raise TypeError(f"batch leaf {name!r}: expected a numpy array, got {type(x).__name__}")
            if x.ndim < 1 or x.shape[0] != self.batch_size:
                raise ValueError(f"batch leaf {name!r}: expected the batch axis first with "
                                 f"train.batch_size={self.batch_size} rows, got shape {x.shape}")
        if self.treedef is None:
            self.treedef, self.dtypes = treedef, [x.dtype for x in leaves]
        if treedef != self.treedef:
            raise ValueError(f"batch at position {position}: expected the structure of the first batch "
                             f"{self.treedef}, got {treedef}")
        for name, x, dtype in zip(names, leaves, self.dtypes):
            if x.dtype != dtype:
                raise TypeError(f"batch leaf {name!r} at position {position}: expected dtype {dtype} "
                                f"(as in the first batch), got {x.dtype}")
        bad = [f"{name} ({int(np.size(x) - np.isfinite(x).sum())} values)" for name, x in zip(names, leaves)
               if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all()]
        if bad:
            self.skipped += 1
            self._run += 1
            log.warning("skipping the batch at data position %d: non-finite values in %s", position, ", ".join(bad))
            if self._run > MAX_CONSECUTIVE_SKIPS:
                raise ValueError(f"batches: more than {MAX_CONSECUTIVE_SKIPS} consecutive batches with non-finite "
                                 f"values (last at data position {position}); the data is broken")
            return False
        self._run = 0
        shape = [x.shape for x in leaves]
        if train and shape not in self.shapes:
            if len(self.shapes) >= self.max_shapes:
                raise ValueError(f"batch at position {position}: a new batch shape beyond train.max_batch_shapes="
                                 f"{self.max_shapes} (each distinct shape compiles the train step once); "
                                 f"seen {self.shapes}, new {shape}")
            self.shapes.append(shape)
        return True


def _batch_stream(exp: Experiment, seed: int, position: int, overfit: int) -> Iterator[tuple[object, int]]:
    if not overfit:
        yield from exp.train_batches(seed, position)
        return
    fixed = [b for b, _ in itertools.islice(exp.train_batches(seed, 0), overfit)]
    for p in itertools.count(position):
        yield fixed[p % overfit], p + 1


def _flat_diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _flat_diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix[:-1]]


def _validate(eval_step, params, batches, key, guard: _BatchGuard, mesh) -> dict:
    """Validation loss (weighted mean of per-example losses) and its curve over the flow-time bins."""
    total = None
    for i, batch in enumerate(batches):
        if guard.accept(batch, i, train=False):
            out = jax.device_get(eval_step(params, shard_batch(batch, mesh), jax.random.fold_in(key, i)))
            total = out if total is None else {k: total[k] + out[k] for k in total}
    if total is None:
        return {}
    per_t = [float(s / c) if c > 0 else None for s, c in zip(total["bin_sums"], total["bin_counts"])]
    return {"val_loss": float(total["loss_sum"] / max(total["weight_sum"], 1e-12)), "val_loss_per_t": per_t}


def run(exp: Experiment, workdir, *, progress: bool = True,
        callbacks: Sequence[Callable[[int, TrainState], None]] = ()) -> RunResult:
    """Trains ``exp`` (its ``exp.config``) in ``workdir`` until ``train.steps``, resuming if possible.

    Args:
      exp: the built experiment.
      workdir: the run's directory (checkpoints, ``config.json``, ``metrics.jsonl``, ``tb/``, PNGs).
      progress: show the progress bar.
      callbacks: ``callback(step, state)`` after every step (after any checkpoint save of that step).
    """
    cfg, tc = exp.config, exp.config.train
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(tc.num_devices)
    n_data = mesh.shape[DATA_AXIS]
    if tc.batch_size % n_data:
        raise ValueError(f"train.batch_size: expected a multiple of the {n_data} devices on the data axis, "
                         f"got {tc.batch_size}")
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps), make_schedule(cfg.optim, tc.steps)
    k_init, k_step, k_eval = jax.random.split(jax.random.key(tc.seed), 3)
    abstract = abstract_state(exp.init_params, optimizer, k_init)
    shardings = state_shardings(abstract, mesh, tc.fsdp)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    cfg_dict = config_to_dict(cfg)
    ckpt = Checkpointer(workdir / "checkpoints", tc.keep_checkpoints)
    writer = None
    try:
        restored = ckpt.restore_latest(target)
        position = 0
        if restored is not None:  # 1. resume from the workdir
            state, position, source = restored.state, restored.position, "workdir"
            changed = _flat_diff(restored.config, cfg_dict)
            if changed:
                log.warning("resuming from step %d with a config that differs in: %s", restored.step,
                            ", ".join(changed))
        elif tc.init_from:  # 2. parameters of another run
            params = restore_params(tc.init_from, abstract.params, shardings.params)
            state, source = state_from_params(params, optimizer, shardings), "init_from"
        else:  # 3. from scratch
            state, source = create_state(exp.init_params, optimizer, k_init, shardings), "scratch"
        start = step = int(jax.device_get(state.step))
        log.info("starting at step %d (from %s) in %s", step, source, workdir)
        write_config(cfg, workdir / "config.json")
        done_path = workdir / "done.json"
        if step >= tc.steps and done_path.exists() and json.loads(done_path.read_text()).get("step") == step:
            log.info("the run is complete (step %d of %d); nothing to do", step, tc.steps)
            return RunResult(state, step, position, start, source, 0, [], 0, [])

        writer = MetricsWriter(workdir, total_steps=tc.steps, start_step=step,
                               grad_names=leaf_names(abstract.params), progress=progress)
        train_step = jit_train_step(make_train_step(exp.loss_fn, optimizer, schedule, ema_decay=cfg.optim.ema_decay,
                                                    compute_dtype=tc.compute_dtype), shardings, mesh)
        eval_step = jit_eval_step(make_eval_step(exp.loss_fn, tc.compute_dtype, T_BINS), shardings.params, mesh)
        guard = _BatchGuard(tc.batch_size, tc.max_batch_shapes)

        def evaluate(final: bool) -> list:
            params = state.ema_params if tc.eval_ema else state.params
            scalars = _validate(eval_step, params, exp.eval_batches(), k_eval, guard, mesh)
            scalars.update({k: float(v) for k, v in exp.evaluate(params, step, workdir).items()})
            writer.write(step, scalars)
            outputs = list(exp.write_samples(params, step, workdir))
            if (final or outputs) and writer.primary:
                outputs.append(plot_loss_curve(read_metrics(writer.path), workdir / "loss_curve.png", cfg.experiment))
            return outputs

        batches = _batch_stream(exp, tc.seed, position, tc.overfit_batches)
        while step < tc.steps:
            batch, next_position = next(batches)
            if not guard.accept(batch, position):
                position = next_position
                continue
            state, metrics = train_step(state, shard_batch(batch, mesh), k_step)
            step, position = step + 1, next_position
            writer.push(step, metrics)
            last = step == tc.steps
            save = step % tc.ckpt_every == 0 or last
            eval_now = bool(tc.eval_every) and step % tc.eval_every == 0 and not last
            if step % tc.log_every == 0 or save or eval_now:  # NaN/inf surface before any eval or save
                writer.flush(compiles=_compiles(train_step, guard), skipped_batches=guard.skipped)
            if eval_now:
                evaluate(final=False)
            if save:
                ckpt.save(state, position=position, config=cfg_dict)
            for callback in callbacks:
                callback(step, state)
        ckpt.wait()
        outputs = evaluate(final=True)
        atomic_write_text(done_path, json.dumps({"step": step, "position": position}) + "\n")
        compiles = _compiles(train_step, guard)
        log.info("done at step %d: %d train-step compilation(s) for %d batch shape(s), %d skipped batch(es)",
                 step, compiles, len(guard.shapes), guard.skipped)
        return RunResult(state, step, position, start, source, compiles, guard.shapes, guard.skipped, outputs)
    finally:
        if writer is not None:
            writer.close()
        ckpt.close()


def _compiles(jitted, guard: _BatchGuard) -> int:
    """Compiled variants of the jitted train step (jax's cache size; the distinct batch shapes as a fallback)."""
    size = getattr(jitted, "_cache_size", None)
    return int(size()) if callable(size) else len(guard.shapes)
