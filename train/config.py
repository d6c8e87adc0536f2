"""Experiment configs: frozen dataclass trees, type-checked ``--set a.b=value`` overrides, JSON output.

An experiment's config is a :class:`Config`: the trainer's own sections (:class:`OptimConfig`,
:class:`TrainConfig`) plus the experiment's ``model`` and ``data`` dataclasses. Everything is frozen (hashable,
usable as a static jit argument). Overrides are parsed against the declared field types::

    apply_overrides(cfg, ["optim.lr=1e-3", "train.compute_dtype=bfloat16", "model.hidden=64"])

An unknown key raises ``ValueError`` listing every valid key; a value of the wrong type raises ``ValueError``
naming the key, the expected type and the value given.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from train.files import atomic_write_text

__all__ = ["OptimConfig", "TrainConfig", "Config", "apply_overrides", "check_config", "leaf_keys", "config_to_dict",
           "write_config"]


def _require(ok: bool, key: str, expected: str, got) -> None:
    if not ok:
        raise ValueError(f"{key}: expected {expected}, got {got!r}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay, after global-norm clipping.

    Attributes:
      lr: peak learning rate, reached after ``warmup_steps``.
      warmup_steps: linear warmup from 0.
      end_lr_factor: the cosine ends at ``lr * end_lr_factor`` at ``train.steps``.
      b1, b2, eps: Adam moments.
      weight_decay: decoupled (AdamW) weight decay.
      clip_norm: global gradient-norm clip (0 disables clipping).
      ema_decay: EMA of the parameters, ``ema = d * ema + (1 - d) * params`` after every step.
    """

    lr: float = 1e-3
    warmup_steps: int = 100
    end_lr_factor: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self):
        _require(self.lr > 0, "optim.lr", "a positive learning rate", self.lr)
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "an int >= 0", self.warmup_steps)
        _require(0 <= self.end_lr_factor <= 1, "optim.end_lr_factor", "a factor in [0, 1]", self.end_lr_factor)
        _require(self.clip_norm >= 0, "optim.clip_norm", "a norm >= 0 (0 = no clipping)", self.clip_norm)
        _require(0 <= self.ema_decay < 1, "optim.ema_decay", "a decay in [0, 1)", self.ema_decay)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loop: length, batch, intervals, devices, numerics.

    Attributes:
      steps: total optimizer steps (the run is done when the state reaches it).
      batch_size: global batch (rows over all devices).
      seed: init, data order and per-step keys derive from it.
      log_every: host pulls scalars, checks NaN/inf and writes metrics every this many steps.
      eval_every: validation loss, experiment metrics and samples (0 = at the end only).
      ckpt_every: checkpoint interval (the last step is always saved).
      keep_checkpoints: the newest N checkpoints are kept.
      compute_dtype: ``float32`` or ``bfloat16`` forward/backward; parameters and optimizer stay float32.
      num_devices: devices on the ``data`` mesh axis (0 = all).
      fsdp: also shard parameters and optimizer state over the ``data`` axis.
      max_batch_shapes: bound on distinct batch shapes, hence on train-step compilations.
      overfit_batches: if > 0, cycle over the first N batches (the "can it overfit a tiny batch" check).
      init_from: a workdir or checkpoint directory whose params start a fresh run (see train.loop).
      eval_ema: evaluate and sample with the EMA parameters (else the raw ones).
    """

    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    num_devices: int = 0
    fsdp: bool = False
    max_batch_shapes: int = 8
    overfit_batches: int = 0
    init_from: str = ""
    eval_ema: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints", "max_batch_shapes"):
            _require(getattr(self, name) >= 1, f"train.{name}", "an int >= 1", getattr(self, name))
        for name in ("seed", "eval_every", "num_devices", "overfit_batches"):
            _require(getattr(self, name) >= 0, f"train.{name}", "an int >= 0", getattr(self, name))
        _require(self.compute_dtype in ("float32", "bfloat16"), "train.compute_dtype", "float32 or bfloat16",
                 self.compute_dtype)


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment's resolved configuration.

    Attributes:
      experiment: the experiment's name (its config file's stem).
      model, data: the experiment's own frozen dataclasses.
      optim, train: the trainer's sections.
    """

    experiment: str
    model: Any
    data: Any
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()


# ---------------------------------------------------------------------------------------------- overrides


def _hints(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    # A field declared ``Any`` (Config.model/data) takes the type of the dataclass it holds.
    return {f.name: (type(getattr(obj, f.name)) if hints[f.name] is Any else hints[f.name])
            for f in dataclasses.fields(obj)}


def leaf_keys(config, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config tree, e.g. ``["data.source", ..., "train.steps"]``."""
    keys = []
    for name, tp in _hints(config).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _parse(key: str, text: str, tp):
    """``text`` converted to the field type ``tp``, or ValueError naming key, type and value."""
    err = ValueError(f"--set {key}: expected {_type_name(tp)}, got {text!r}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() == "none":
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(key, text, arg)
            except ValueError:
                pass
        raise err
    if origin is Literal:
        for choice in args:
            try:
                value = _parse(key, text, type(choice))
            except ValueError:
                continue
            if value == choice:
                return value
        raise err
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise err
    if tp is str:
        return text
    if tp in (int, float):
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise err from None
        if isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else int):
            raise err
        if tp is float and not math.isfinite(value):  # e.g. 1e999
            raise ValueError(f"--set {key}: expected a finite float, got {text!r}")
        return tp(value)
    if origin is tuple:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise err from None
        value = value if isinstance(value, (tuple, list)) else (value,)
        elem = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(elem) != len(value):
            raise err
        return tuple(_parse(key, repr(v), t) for v, t in zip(value, elem))
    raise TypeError(f"--set {key}: fields of type {_type_name(tp)} cannot be set from the command line")


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or repr(tp).replace("typing.", "")


def _lookup(config, path: list[str], text: str, full_key: str, root):
    """The parsed value of ``--set full_key=text`` (checked against the field's declared type)."""
    hints = _hints(config)
    name = path[0]
    if name not in hints:
        raise ValueError(f"--set {full_key}: unknown key; valid keys are: {', '.join(leaf_keys(root))}")
    current = getattr(config, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ValueError(f"--set {full_key}: is a section, set one of its fields: "
                             f"{', '.join(leaf_keys(current, full_key + '.'))}")
        return _lookup(current, path[1:], text, full_key, root)
    if len(path) > 1:
        raise ValueError(f"--set {full_key}: unknown key; valid keys are: {', '.join(leaf_keys(root))}")
    return _parse(full_key, text, hints[name])


def _rebuild(config, changes: dict):
    """``config`` with the nested ``changes`` applied: one ``dataclasses.replace`` per changed dataclass, so fields
    that must agree (e.g. an encoder's input and output widths) can be changed together."""
    kwargs = {name: _rebuild(getattr(config, name), sub) if isinstance(sub, dict) else sub
              for name, sub in changes.items()}
    return dataclasses.replace(config, **kwargs)


def apply_overrides(config, overrides: Sequence[str]):
    """``config`` with every ``"a.b=value"`` applied (values parsed against the field types; a key given twice
    takes its last value). All overrides are applied at once, so each dataclass validates its new fields together."""
    changes: dict = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"--set: expected key=value (e.g. optim.lr=1e-3), got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        value = _lookup(config, path, text, key, config)
        node = changes
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return _rebuild(config, changes) if changes else config


def check_config(config) -> None:
    """Checks what no single field can: ``optim.warmup_steps < train.steps``. Call it after the overrides."""
    optim, tc = getattr(config, "optim", None), getattr(config, "train", None)
    if optim is not None and tc is not None and not optim.warmup_steps < tc.steps:
        raise ValueError(f"optim.warmup_steps: expected fewer than train.steps={tc.steps}, got {optim.warmup_steps} "
                         f"(add --set optim.warmup_steps=N with N < {tc.steps})")


# ------------------------------------------------------------------------------------------------- output


def config_to_dict(config) -> dict:
    """The config tree as JSON-compatible nested dicts (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def write_config(config, path) -> None:
    """Writes the resolved config as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
