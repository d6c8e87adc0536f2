"""Checkpoints with orbax ``CheckpointManager``: state + data position + resolved config, verified on restore.

Layout: ``<workdir>/checkpoints/<step>/{state,meta}``. ``state`` is the :class:`train.state.TrainState`;
``meta`` is JSON: step, data-iterator position, resolved config, and a fingerprint of every state leaf.

Safety:

* **Atomic saves.** orbax writes a step into a temporary directory and renames it into place only once every
  item is written (the rename is the commit). A process killed mid-save, or a save whose disk write fails,
  leaves only a temporary directory, which is ignored and cleaned up on the next start; the previous
  checkpoints are untouched (old ones are pruned only after a newer one is committed).
* **Async saves are awaited**: a save copies the state to host memory, then writes in the background while
  training continues; the next save, :meth:`Checkpointer.wait` and :meth:`Checkpointer.close` wait for it
  and re-raise its error.
* **Verified restores.** A restore recomputes the fingerprint (a position-weighted wrapping sum of each leaf's
  bits) and compares it to the saved one. A latest checkpoint that cannot be read or does not match is moved
  to ``<workdir>/corrupt_checkpoints/`` with a warning and the previous one is tried.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from fmjax.typing import PyTree

__all__ = ["Checkpointer", "Restored", "fingerprint", "restore_params"]

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    """A verified checkpoint: the state (in the requested shardings), its step, data position and config."""

    state: Any
    step: int
    position: int
    config: dict


def _leaf_bits(x: jax.Array) -> jax.Array:
    """The raw bits of ``x`` as uint32 (narrow types widened, 64-bit types split in two words)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


@jax.jit
def _fingerprint(tree):
    def one(x):
        bits = _leaf_bits(x).reshape(-1)
        weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        return jnp.sum(bits * weights, dtype=jnp.uint32)  # wraps mod 2^32: order-independent, exact

    return [one(x) for x in jax.tree.leaves(tree)]


def fingerprint(tree: PyTree) -> list[int]:
    """One uint32 per leaf of ``tree``: ``Σ_i bits_i · (2i + 1) mod 2³²`` over the leaf's flattened bits."""
    return [int(v) for v in jax.device_get(_fingerprint(tree))]


class Checkpointer:
    """Saves and restores :class:`train.state.TrainState` checkpoints under ``directory``.

    Args:
      directory: the checkpoint directory (``<workdir>/checkpoints``); created on the first save.
      keep: how many of the newest checkpoints to keep.
      async_save: write in the background (the default); saves are always awaited before the next one.
    """

    def __init__(self, directory, keep: int = 3, *, async_save: bool = True):
        self.directory = pathlib.Path(directory).resolve()
        self.quarantine = self.directory.parent / "corrupt_checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    # ------------------------------------------------------------------------------------------------ save
    def save(self, state, *, position: int, config: dict) -> None:
        """Starts saving ``state`` at step ``state.step`` with the data ``position`` after it and ``config``.
        Waits for the previous save first (raising its error, if any)."""
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

    # --------------------------------------------------------------------------------------------- restore
    def restore_latest(self, abstract_state) -> Restored | None:
        """The newest checkpoint that restores and verifies, in the shardings of ``abstract_state`` (a pytree of
        ``jax.ShapeDtypeStruct`` with ``sharding`` set); None when there is none. Bad ones are quarantined."""
        for step in reversed(self.steps()):
            try:
                return self._restore(step, abstract_state)
            except Exception as err:  # noqa: BLE001 -- any failure to read or verify means "corrupt"
                moved = self._quarantine(step)
                log.warning("checkpoint at step %d is unreadable or corrupt (%s: %s); moved it to %s and "
                            "falling back to the previous checkpoint", step, type(err).__name__,
                            str(err).splitlines()[0][:300] if str(err) else "", moved)
        return None

    def _restore(self, step: int, abstract_state) -> Restored:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        state, meta = out.state, out.meta
        for key in ("step", "position", "config", "fingerprint"):
            if key not in meta:
                raise ValueError(f"meta lacks {key!r}")
        if int(jax.device_get(state.step)) != step or meta["step"] != step:
            raise ValueError(f"step mismatch: directory {step}, meta {meta['step']}, state {state.step}")
        if fingerprint(state) != list(meta["fingerprint"]):
            raise ValueError("fingerprint mismatch: the restored arrays differ from the saved ones")
        return Restored(state, step, int(meta["position"]), meta["config"])

    def _quarantine(self, step: int) -> pathlib.Path:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.directory / str(step)), str(target))
        self._manager.reload()
        return target


def restore_params(source, abstract_params: PyTree, shardings: PyTree) -> PyTree:
    """The parameters of the newest checkpoint under ``source`` (a workdir, or its ``checkpoints`` directory),
    checked against ``abstract_params`` and placed into ``shardings``. For ``train.init_from``."""
    root = pathlib.Path(source)
    directory = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    manager = ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_names=("state", "meta"))
    try:
        step = manager.latest_step()
        if step is None:
            raise ValueError(f"train.init_from: expected a workdir or checkpoint directory, "
                             f"{source!r} has no checkpoint")
        tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    finally:
        manager.close()
    params = tree["params"]
    want = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    got = jax.tree_util.tree_flatten_with_path(params)[0]
    if [p for p, _ in want] != [p for p, _ in got]:
        raise ValueError(f"train.init_from: the params at step {step} of {source!r} have a different structure "
                         f"({len(got)} leaves) from this model's ({len(want)} leaves)")
    for (path, a), (_, b) in zip(want, got):
        if (tuple(a.shape), np.dtype(a.dtype)) != (tuple(np.shape(b)), np.dtype(b.dtype)):
            raise ValueError(f"train.init_from: params{jax.tree_util.keystr(path)} at step {step} of {source!r}: "
                             f"expected {a.dtype}{list(a.shape)}, got {b.dtype}{list(np.shape(b))}")
    return jax.device_put(params, shardings)
