"""Flow checkpoints (``config.json`` + ``params/``) and the one flow loader for them and trainer workdirs
(:func:`load_flow`, :func:`load_teacher`); see :mod:`fmjax.checkpoint`."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import typing
from typing import Any, NamedTuple

from fmjax.checkpoint.run import _read_run
from fmjax.checkpoint.trees import (CHECKPOINTS_DIR, CONFIG_FILE, PARAMS_DIR, CheckpointError,
                                    IncompatibleCheckpointError, _first_line, compare_leaves, leaf_table)

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
