"""The training loop: resume, batches checked on the host, the jitted step, metrics, evaluation, checkpoints.

Where the starting state comes from (the first that applies):

1. **workdir** -- the newest verified checkpoint in ``<workdir>/checkpoints`` (state and data position), so
   rerunning the same command after a crash or preemption continues exactly where the run stopped;
2. **init-from** -- ``train.init_from`` names another run (workdir or checkpoint directory): its parameters
   start a fresh state (step 0, new optimizer state, EMA = params);
3. **scratch** -- fresh parameters from ``train.seed``.

A rerun never destroys the run in the workdir (:mod:`train.resume`): a config that differs in a setting that
changes the state, or a saved state of another structure, stops with an error naming the keys (nothing
written); ``config.json`` is written once, by the run's first start; every start appends a line to
``resumes.jsonl`` (step, source, the resume-safe settings that changed); ``reset=True`` (``--reset``) archives the
old run under ``archive/<time>/`` before starting over.

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
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from fmjax.checkpoint import Checkpointer, IncompatibleCheckpointError, restore_params
from train.config import config_to_dict, write_config
from train.experiment import Experiment
from train.files import append_line, atomic_write_text
from train.metrics import MetricsWriter, read_metrics
from train.optim import make_optimizer, make_schedule
from train.plots import plot_loss_curve
from train.resume import (RunError, archive_run, check_resume, incompatible_state, workdir_is_used)
from train.sharding import DATA_AXIS, make_mesh, shard_batch, state_shardings
from train.state import TrainState, abstract_state, create_state, state_from_params
from train.step import jit_eval_step, jit_train_step, leaf_names, make_eval_step, make_train_step

__all__ = ["RunResult", "run", "TrainingInterrupted", "MAX_CONSECUTIVE_SKIPS", "T_BINS"]

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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run`: ``step`` is the last completed update, ``checkpoint`` the newest committed
    checkpoint step (None if none); rerunning the same command resumes from ``checkpoint``."""

    def __init__(self, step: int, checkpoint: int | None):
        super().__init__(step, checkpoint)
        self.step, self.checkpoint = step, checkpoint


def _setup_error(err: Exception) -> RunError:
    return err if isinstance(err, RunError) else RunError(str(err))


def run(exp: Experiment, workdir, *, progress: bool = True, reset: bool = False,
        callbacks: Sequence[Callable[[int, TrainState], None]] = ()) -> RunResult:
    """Trains ``exp`` (its ``exp.config``) in ``workdir`` until ``train.steps``, resuming if possible.

    Nothing a previous run wrote is overwritten (see :mod:`train.resume`): a rerun whose config or state cannot
    continue the run raises :class:`train.resume.IncompatibleRunError` before touching the workdir; metrics rows
    past the resumed step (written by an interrupted process) and a torn last line are moved to
    ``metrics.discarded.jsonl``; corrupt checkpoints to ``corrupt_checkpoints/``.

    Args:
      exp: the built experiment.
      workdir: the run's directory (checkpoints, ``config.json``, ``metrics.jsonl``, ``tb/``, PNGs).
      progress: show the progress bar.
      reset: start a fresh run even if ``workdir`` holds one: its files are first moved to ``workdir/archive/<time>/``.
      callbacks: ``callback(step, state)`` after every step (after any checkpoint save of that step).

    Raises:
      train.resume.RunError: the run cannot start as configured (message says what to change); nothing written.
      TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``), with the step reached and the newest checkpoint.
    """
    cfg, tc = exp.config, exp.config.train
    workdir = pathlib.Path(workdir)
    try:  # everything that can be checked before the workdir is touched
        if workdir.exists() and not workdir.is_dir():
            raise RunError(f"--workdir {workdir}: expected a directory, got a file")
        mesh = make_mesh(tc.num_devices)
        n_data = mesh.shape[DATA_AXIS]
        if tc.batch_size % n_data:
            raise RunError(f"train.batch_size: expected a multiple of the {n_data} devices on the data axis, "
                           f"got {tc.batch_size}")
        optimizer, schedule = make_optimizer(cfg.optim, tc.steps), make_schedule(cfg.optim, tc.steps)
    except ValueError as err:
        raise _setup_error(err) from None
    k_init, k_step, k_eval = jax.random.split(jax.random.key(tc.seed), 3)
    abstract = abstract_state(exp.init_params, optimizer, k_init)
    shardings = state_shardings(abstract, mesh, tc.fsdp)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    cfg_dict = config_to_dict(cfg)
    restored, changes = _resume_point(exp, workdir, target, cfg_dict, reset)
    position = 0
    if restored is not None:  # 1. resume from the workdir
        state, position, source = restored.state, restored.position, "workdir"
        if changes:
            log.warning("resuming from step %d with changed resume-safe settings: %s", restored.step,
                        "; ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changes.items()))
    elif tc.init_from:  # 2. parameters of another run
        try:
            params = restore_params(tc.init_from, abstract.params, shardings.params)
        except (ValueError, OSError) as err:
            raise _setup_error(err) from None
        state, source = state_from_params(params, optimizer, shardings), "init_from"
    else:  # 3. from scratch
        state, source = create_state(exp.init_params, optimizer, k_init, shardings), "scratch"
    start = step = int(jax.device_get(state.step))
    done_path = workdir / "done.json"
    if step >= tc.steps and _done_step(done_path) == step:
        log.info("the run is complete (step %d of %d); nothing to do", step, tc.steps)
        return RunResult(state, step, position, start, source, 0, [], 0, [])
    log.info("starting at step %d (from %s) in %s", step, source, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").exists():
        write_config(cfg, workdir / "config.json")
    append_line(workdir / "resumes.jsonl", json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step,
                                                       "source": source, "changes": changes}))
    ckpt = Checkpointer(workdir / "checkpoints", tc.keep_checkpoints)
    writer = None
    try:
        writer = MetricsWriter(workdir, total_steps=tc.steps, start_step=step,
                               grad_names=leaf_names(abstract.params), progress=progress,
                               redo_eval=step >= tc.steps)
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
    except KeyboardInterrupt:
        try:
            ckpt.wait()
        finally:
            saved = ckpt.steps()
        raise TrainingInterrupted(step, saved[-1] if saved else None) from None
    finally:
        if writer is not None:
            writer.close()
        ckpt.close()


def _resume_point(exp: Experiment, workdir: pathlib.Path, target, cfg_dict: dict, reset: bool):
    """``(Restored | None, resume-safe changes)``: the checkpoint to resume from, after the checks of
    :mod:`train.resume`; with ``reset`` the old run is archived first. Raises before anything is written."""
    safe = tuple(getattr(exp, "resume_safe_keys", ()))
    used = workdir_is_used(workdir)
    if used and reset:
        log.warning("--reset: moved the previous run's files (%s) to %s", ", ".join(used), archive_run(workdir))
        return None, {}
    changes: dict = {}

    def check(step: int, meta: dict) -> None:
        nonlocal changes
        changes = check_resume(workdir, meta["config"], cfg_dict, step=step, safe=safe)

    restored = None
    if (workdir / "checkpoints").is_dir():
        reader = Checkpointer(workdir / "checkpoints", read_only=True)
        try:
            restored = reader.restore_latest(target, check=check)
        except IncompatibleCheckpointError as err:
            raise incompatible_state(workdir, str(err)) from None
        finally:
            reader.close()
    if restored is None and used:  # a used workdir without a usable checkpoint: its config must still agree
        if not (workdir / "config.json").is_file():
            raise RunError(f"--workdir {workdir}: holds run files ({', '.join(used)}) but no config.json to check "
                           "this run against; add --reset to archive them and start over, or use a new --workdir")
        try:
            saved = json.loads((workdir / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"--workdir {workdir}: its config.json cannot be read ({err}); add --reset to archive "
                           "the run and start over, or use a new --workdir") from None
        changes = check_resume(workdir, saved, cfg_dict, step=None, safe=safe)
        log.warning("%s holds no usable checkpoint; starting this run (same config) from step 0", workdir)
    return restored, changes


def _done_step(path: pathlib.Path) -> int | None:
    """The step recorded in ``done.json`` (None if absent or unreadable: the final evaluation is then redone)."""
    try:
        return int(json.loads(path.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _compiles(jitted, guard: _BatchGuard) -> int:
    """Compiled variants of the jitted train step (jax's cache size; the distinct batch shapes as a fallback)."""
    size = getattr(jitted, "_cache_size", None)
    return int(size()) if callable(size) else len(guard.shapes)
