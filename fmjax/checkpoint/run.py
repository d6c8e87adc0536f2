"""Trainer run checkpoints: :class:`Checkpointer` (orbax ``CheckpointManager``, verified restores, corrupt vs
incompatible) and :func:`restore_params` (``train.init_from``); see :mod:`fmjax.checkpoint`."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from fmjax.checkpoint.trees import (CHECKPOINTS_DIR, QUARANTINE_DIR, CheckpointError, IncompatibleCheckpointError,
                                    MissingCheckpointError, _first_line, _named_leaves, compare_leaves, fingerprint,
                                    leaf_table)
from fmjax.typing import PyTree

log = logging.getLogger("fmjax.checkpoint")

# ------------------------------------------------------------------------------------ trainer checkpoints
class Restored(NamedTuple):
    """A verified checkpoint: the state (in the requested shardings), its step, data position and config."""

    state: Any
    step: int
    position: int
    config: dict


def _manager(directory: pathlib.Path, *, read_only: bool, keep: int = 3, async_save: bool = True):
    import orbax.checkpoint as ocp

    # "read only" without orbax's read_only flag (which warns twice): no create, no cleanup, no pruning, no async;
    # constructing it writes nothing.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save and not read_only)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"), item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


class Checkpointer:
    """Saves and restores train-state checkpoints under ``directory`` (``<workdir>/checkpoints``).

    Args:
      directory: the checkpoint directory; created on the first save.
      keep: how many of the newest checkpoints to keep.
      async_save: write in the background (the default); saves are always awaited before the next one.
      read_only: never create, clean up or prune anything (restores only; quarantining still moves corrupt steps).
    """

    def __init__(self, directory, keep: int = 3, *, async_save: bool = True, read_only: bool = False):
        self.directory = pathlib.Path(os.fspath(directory)).resolve()
        self.quarantine = self.directory.parent / QUARANTINE_DIR
        self._manager = _manager(self.directory, read_only=read_only, keep=keep, async_save=async_save)

    def save(self, state, *, position: int, config: dict) -> None:
        """Starts saving ``state`` at step ``state.step`` with the data ``position`` after it and ``config``.
        Waits for the previous save first (raising its error, if any)."""
        import orbax.checkpoint as ocp

        self.wait()
        step = int(jax.device_get(state.step))
        meta = dict(step=step, position=int(position), config=config, fingerprint=fingerprint(state))
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        """Blocks until the pending async save is committed; re-raises its error."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def steps(self) -> list[int]:
        """Committed checkpoint steps, oldest first."""
        return sorted(self._manager.all_steps())

    def restore_latest(self, abstract_state, *, check: Callable[[int, dict], None] | None = None) -> Restored | None:
        """The newest checkpoint that restores and verifies, in the shardings of ``abstract_state`` (a pytree of
        ``jax.ShapeDtypeStruct`` with ``sharding`` set); None when there is none.

        Each checkpoint, newest first: its meta is read (unreadable: corrupt), ``check(step, meta)`` may raise
        :class:`IncompatibleCheckpointError` (e.g. for a changed config), its saved tree is compared with
        ``abstract_state`` (a difference raises :class:`IncompatibleCheckpointError` naming the leaves), then the
        arrays are restored and their fingerprint verified (failure: corrupt). Corrupt checkpoints are moved to
        ``corrupt_checkpoints/`` with a warning -- only once a usable one was found or none is left, so an
        incompatible checkpoint raises before anything is moved.
        """
        corrupt, restored = [], None
        for step in reversed(self.steps()):
            try:
                meta = self._read_meta(step)
                if check is not None:
                    check(step, meta)
                self._check_structure(step, abstract_state)
                restored = self._restore(step, abstract_state, meta)
                break
            except CheckpointError as err:
                corrupt.append((step, err))
        for step, err in corrupt:
            moved = self._quarantine(step)
            log.warning("checkpoint at step %d is unreadable or corrupt (%s); moved it to %s%s", step, err, moved,
                        "" if restored is None else f"; resuming from the one at step {restored.step}")
        return restored

    def _read_meta(self, step: int) -> dict:
        import orbax.checkpoint as ocp

        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # noqa: BLE001 -- whatever orbax raises for an unreadable file
            raise CheckpointError(f"its meta cannot be read ({_first_line(err)})") from err
        missing = [k for k in ("step", "position", "config", "fingerprint") if not isinstance(meta, dict) or k not in meta]
        if missing or meta["step"] != step:
            raise CheckpointError(f"its meta lacks {missing}" if missing else f"its meta says step {meta['step']}")
        return meta

    def _check_structure(self, step: int, abstract_state) -> None:
        try:
            saved = self._manager.item_metadata(step)["state"]
            table = leaf_table(saved) if saved is not None else {}
            if not table:  # orbax returns no tree when the array metadata is unreadable
                raise ValueError("no tree metadata")
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"its state metadata cannot be read ({_first_line(err)})") from err
        diff = compare_leaves(leaf_table(abstract_state), table)
        if diff:
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {str(self.directory)!r} holds a train state of another structure "
                "than this run's:\n  " + "\n  ".join(diff))

    def _restore(self, step: int, abstract_state, meta: dict) -> Restored:
        import orbax.checkpoint as ocp

        try:
            state = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))).state
            prints = fingerprint(state)
        except Exception as err:  # noqa: BLE001 -- a truncated or damaged array file
            raise CheckpointError(f"its arrays cannot be read ({_first_line(err)})") from err
        if int(jax.device_get(state.step)) != step:
            raise CheckpointError(f"its state says step {int(jax.device_get(state.step))}")
        if prints != list(meta["fingerprint"]):
            raise CheckpointError("fingerprint mismatch: the restored arrays differ from the saved ones")
        return Restored(state, step, int(meta["position"]), meta["config"])

    def _quarantine(self, step: int) -> pathlib.Path:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        while target.exists():
            target = target.with_name(target.name + "+")
        shutil.move(str(self.directory / str(step)), str(target))
        self._manager.reload()
        return target


def _checkpoint_dir(source) -> pathlib.Path:
    root = pathlib.Path(os.fspath(source))
    return (root / CHECKPOINTS_DIR if (root / CHECKPOINTS_DIR).is_dir() else root).resolve()


def _read_run(source, what: str) -> tuple[dict, int, dict]:
    """``(state as nested dicts of numpy arrays, step, meta)`` of the newest checkpoint of a workdir."""
    import orbax.checkpoint as ocp

    directory = _checkpoint_dir(source)
    if not directory.is_dir():
        raise MissingCheckpointError(f"{what}: expected a trainer workdir or its checkpoint directory, "
                                     f"{str(source)!r} does not exist (it has no checkpoint)")
    manager = _manager(directory, read_only=True)
    try:
        step = manager.latest_step()
        if step is None:
            raise MissingCheckpointError(f"{what}: expected a trainer workdir or checkpoint directory, "
                                         f"{str(source)!r} has no checkpoint")
        try:
            out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                meta=ocp.args.JsonRestore()))
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{what}: the checkpoint at step {step} in {str(directory)!r} cannot be read "
                                  f"({_first_line(err)})") from err
    finally:
        manager.close()
    return out.state, step, out.meta or {}


def restore_params(source, abstract_params: PyTree, shardings: PyTree, *, what: str = "train.init_from") -> PyTree:
    """The parameters of the newest checkpoint under ``source`` (a workdir, or its ``checkpoints`` directory),
    checked against ``abstract_params`` (:class:`IncompatibleCheckpointError` naming the leaves) and placed into
    ``shardings``. For ``train.init_from``."""
    state, step, _ = _read_run(source, what)
    params = state["params"]
    diff = compare_leaves(leaf_table(abstract_params), leaf_table(params))
    if diff:
        raise IncompatibleCheckpointError(f"{what}: the params at step {step} of {str(source)!r} do not fit this "
                                          "model:\n  " + "\n  ".join(diff))
    by_name = dict(_named_leaves(params))
    ordered = [np.asarray(by_name[name]) for name, _ in _named_leaves(abstract_params)]
    return jax.device_put(jax.tree.unflatten(jax.tree.structure(abstract_params), ordered), shardings)
