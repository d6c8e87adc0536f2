"""Checkpoints in one place: the trainer's run checkpoints, converted flow checkpoints, and one flow loader for both.

Layouts:

* **trainer workdir** (``python -m train``): ``config.json`` (the resolved experiment config),
  ``checkpoints/<step>/{state,meta}`` (orbax ``CheckpointManager``; ``state`` is the train state -- ``step``,
  ``params``, ``opt_state``, ``ema_params`` -- and ``meta`` JSON holds the step, the data position, the resolved
  config and a fingerprint of every state leaf), ``corrupt_checkpoints/`` (see below);
* **flow checkpoint** (:func:`save_flow_checkpoint`, e.g. a converted CosyVoice2/3 flow): ``config.json`` (the flow
  config with its class name) and ``params/`` (an orbax ``StandardCheckpointer`` tree); loading needs neither torch
  nor the original files.

:func:`load_flow` reads a flow (module + params) from either; :func:`load_teacher` from a trainer workdir only.

Trainer checkpoint safety (:class:`Checkpointer`):

* **Atomic saves.** orbax writes a step into a temporary directory and renames it into place once every item is
  written; a process killed mid-save leaves only a temporary directory, cleaned up on the next start. Old
  checkpoints are pruned only after a newer one is committed. **Async saves are awaited** (next save, ``wait``,
  ``close``), re-raising their error.
* **Corrupt vs incompatible.** :meth:`Checkpointer.restore_latest` tells apart a checkpoint that is *corrupt*
  (unreadable, truncated, fingerprint mismatch: it is moved to ``corrupt_checkpoints/`` with a warning and the
  previous one is tried) from one that is *incompatible* with the caller (different state structure or shapes,
  or a config the caller's ``check`` rejects): that raises :class:`IncompatibleCheckpointError` before anything
  is moved or written. Nothing is ever deleted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.typing import PyTree

__all__ = ["CheckpointError", "MissingCheckpointError", "IncompatibleCheckpointError", "Checkpointer", "Restored", "fingerprint",
           "restore_params", "leaf_table", "compare_leaves", "save_flow_checkpoint", "load_flow_checkpoint",
           "flow_config_to_dict", "flow_config_from_dict", "LoadedFlow", "load_flow", "load_teacher",
           "CONFIG_FILE", "CHECKPOINTS_DIR", "PARAMS_DIR", "QUARANTINE_DIR"]

log = logging.getLogger(__name__)

CONFIG_FILE, CHECKPOINTS_DIR, PARAMS_DIR, QUARANTINE_DIR = "config.json", "checkpoints", "params", "corrupt_checkpoints"


class CheckpointError(ValueError):
    """A checkpoint cannot be read: missing, truncated, not a checkpoint, or its arrays fail verification."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was expected (also a ``FileNotFoundError``)."""


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint that does not fit: its tree structure, shapes or config differ from what is expected."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------- fingerprints
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


# ------------------------------------------------------------------------------------------ tree comparison
def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _named_leaves(tree) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return [("/".join(_key_name(k) for k in path), x) for path, x in leaves if x is not None]


def leaf_table(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"a/b/c": (shape, dtype)}`` of a pytree of arrays, ``ShapeDtypeStruct`` or orbax metadata. Dict keys,
    attributes and sequence indices all become path parts, so a dataclass state and its orbax dict compare equal."""
    return {name: (tuple(np.shape(x)), str(np.dtype(x.dtype))) for name, x in _named_leaves(tree)}


def compare_leaves(expected: dict, got: dict, limit: int = 8, *, dtypes: bool = True) -> list[str]:
    """Differences between two :func:`leaf_table` s: missing, unexpected and mis-shaped leaves (at most
    ``limit`` of each kind named; ``dtypes=False`` compares shapes only); empty when they agree."""
    if not dtypes:
        expected = {k: (v[0], "") for k, v in expected.items()}
        got = {k: (v[0], "") for k, v in got.items()}
    def show(items):
        return ", ".join(items[:limit]) + (f" ... and {len(items) - limit} more" if len(items) > limit else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shaped = [f"{k}: expected {expected[k][1]}{list(expected[k][0])}, got {got[k][1]}{list(got[k][0])}"
              for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
    return [f"{title} ({len(items)}): {show(items)}" for title, items in
            (("missing leaves", missing), ("unexpected leaves", unexpected), ("mis-shaped leaves", shaped)) if items]


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


# -------------------------------------------------------------------------------------- flow checkpoints
def _flow_classes() -> dict[str, tuple[type, type]]:
    from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig
    from fmjax.models.flow_cv3 import CosyVoice3Flow, CosyVoice3FlowConfig

    return {"Token2MelConfig": (Token2MelConfig, CosyVoice2Flow),
            "CosyVoice3FlowConfig": (CosyVoice3FlowConfig, CosyVoice3Flow)}


def flow_config_to_dict(config) -> dict:
    """A frozen (nested) flow config dataclass as a JSON-ready dict with its class name under ``"class"``."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config: expected a config dataclass, got {type(config).__name__}")
    return {"class": type(config).__name__, **dataclasses.asdict(config)}


def flow_config_from_dict(data: dict):
    """Inverse of :func:`flow_config_to_dict` for the registered flow configs."""
    classes = _flow_classes()
    name = data.get("class") if isinstance(data, dict) else None
    if name not in classes:
        raise ValueError(f"config: unknown class {name!r}; expected one of {sorted(classes)}")
    return _build(classes[name][0], {k: v for k, v in data.items() if k != "class"})


def _build(cls, data: dict):
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a dict of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"config: unknown fields {unknown} for {cls.__name__}")
    kwargs = {k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else
              (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
              for k, v in data.items()}
    return cls(**kwargs)


def _flow_module(config):
    return _flow_classes()[type(config).__name__][1](config)


def _param_shapes(module):
    from fmjax.models.flow import flow_param_shapes

    return flow_param_shapes(module)


def save_flow_checkpoint(directory, config, params, *, overwrite: bool = False) -> pathlib.Path:
    """Writes ``directory/config.json`` and ``directory/params`` (orbax) after checking ``params`` against the
    shapes ``config`` implies. Returns the directory.

    Raises:
      FileExistsError: the directory exists and ``overwrite`` is False.
      TypeError: ``config`` is not a registered flow config.
      IncompatibleCheckpointError: ``params`` do not fit ``config`` (naming the leaves).
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(os.fspath(directory)).resolve()
    if path.exists() and not overwrite:
        raise FileExistsError(f"directory: {str(path)!r} exists; pass overwrite=True to replace it")
    if type(config).__name__ not in _flow_classes():
        raise TypeError(f"config: expected one of {sorted(_flow_classes())}, got {type(config).__name__}")
    diff = compare_leaves(leaf_table(_param_shapes(_flow_module(config))), leaf_table(params), dtypes=False)
    if diff:
        raise IncompatibleCheckpointError("params: do not fit the config:\n  " + "\n  ".join(diff))
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / PARAMS_DIR, params, force=overwrite)
        ckptr.wait_until_finished()
    (path / CONFIG_FILE).write_text(json.dumps(flow_config_to_dict(config), indent=2) + "\n")
    return path


def _read_json(path: pathlib.Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what}: {str(path)!r} is not readable JSON ({_first_line(err)})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}: {str(path)!r} should hold a JSON object, got {type(data).__name__}")
    return data


def load_flow_checkpoint(directory, *, what: str = "directory"):
    """Reads a checkpoint written by :func:`save_flow_checkpoint`: ``(config, params)``. The saved tree is checked
    against the shapes the config implies before the arrays are read.

    ``what`` names the argument in error messages.

    Raises:
      FileNotFoundError: ``directory`` lacks ``config.json`` or ``params/``.
      CheckpointError: a file cannot be read or its config is not a flow config.
      IncompatibleCheckpointError: the params do not fit the config (naming the leaves).
    """
    import orbax.checkpoint as ocp

    path = pathlib.Path(os.fspath(directory)).resolve()
    if not (path / CONFIG_FILE).is_file() or not (path / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"{what}: {str(path)!r} is not an fmjax flow checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/)")
    data = _read_json(path / CONFIG_FILE, what)
    try:
        config = flow_config_from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what}: {str(path / CONFIG_FILE)!r} is not a flow config ({err})") from err
    target = _param_shapes(_flow_module(config))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            saved = ckptr.metadata(path / PARAMS_DIR)
            saved = getattr(saved, "item_metadata", saved)
            if saved is None:  # orbax logs a warning and returns no tree when the array metadata is unreadable
                raise ValueError("no tree metadata")
            table = leaf_table(saved)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{what}: {str(path / PARAMS_DIR)!r} is not a readable orbax tree "
                                  f"({_first_line(err)})") from err
        diff = compare_leaves(leaf_table(target), table, dtypes=False)  # restored as the target's float32
        if diff:
            raise IncompatibleCheckpointError(f"{what}: the params in {str(path)!r} do not fit its "
                                              f"{CONFIG_FILE}:\n  " + "\n  ".join(diff))
        try:
            params = ckptr.restore(path / PARAMS_DIR, target)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{what}: the params in {str(path)!r} cannot be read ({_first_line(err)})") from err
    return config, params


# ------------------------------------------------------------------------------------------- flow loader
class LoadedFlow(NamedTuple):
    """A flow read by :func:`load_flow`: the module (``model.config`` is its config), its params, the checkpoint
    step (None for a flow checkpoint), ``kind`` (``"flow_checkpoint"`` or ``"workdir"``) and, for a workdir, the
    run's resolved config."""

    model: Any
    params: Any
    step: int | None
    kind: str
    run_config: dict | None


def load_teacher(workdir, *, ema: bool = True, what: str = "workdir") -> LoadedFlow:
    """A token2mel (or reflow) trainer workdir's flow: the newest checkpoint's EMA params (raw with
    ``ema=False``), checked against the flow config the checkpoint was saved with (``model.flow``)."""
    path = pathlib.Path(os.fspath(workdir))
    state, step, meta = _read_run(path, what)
    run = meta.get("config")
    if not isinstance(run, dict) and (path / CONFIG_FILE).is_file():
        run = _read_json(path / CONFIG_FILE, what)
    flow = run.get("model", {}).get("flow") if isinstance(run, dict) and isinstance(run.get("model"), dict) else None
    if not isinstance(flow, dict):
        raise ValueError(f"{what}: the workdir {str(path)!r} is not a token2mel run (its config has no model.flow)")
    try:
        config = flow_config_from_dict({"class": "Token2MelConfig", **flow})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what}: the model.flow of {str(path)!r} is not a flow config ({err})") from err
    model = _flow_module(config)
    which = "ema_params" if ema else "params"
    diff = compare_leaves(leaf_table(_param_shapes(model)), leaf_table(state.get(which, {})), dtypes=False)
    if diff:
        raise IncompatibleCheckpointError(f"{what}: the {which} at step {step} of {str(path)!r} do not fit its "
                                          "model.flow config:\n  " + "\n  ".join(diff))
    return LoadedFlow(model, state[which], step, "workdir", run)


def load_flow(path, *, ema: bool = True, what: str = "path") -> LoadedFlow:
    """A flow from a flow checkpoint (``config.json`` + ``params/``) or a trainer workdir (``config.json`` or
    checkpoint meta + ``checkpoints/``; EMA params unless ``ema=False``). ``what`` names the argument in errors."""
    p = pathlib.Path(os.fspath(path))
    if (p / CONFIG_FILE).is_file() and (p / PARAMS_DIR).is_dir():
        config, params = load_flow_checkpoint(p, what=what)
        return LoadedFlow(_flow_module(config), params, None, "flow_checkpoint", None)
    if (p / CHECKPOINTS_DIR).is_dir():
        return load_teacher(p, ema=ema, what=what)
    raise FileNotFoundError(f"{what}: {str(p)!r} is neither an fmjax flow checkpoint ({CONFIG_FILE}, {PARAMS_DIR}/) "
                            f"nor a trainer workdir ({CONFIG_FILE}, {CHECKPOINTS_DIR}/)")
