"""The experiment interface: what an experiment provides; the trainer owns everything else.

An experiment's config is a Python file (``train/configs/<name>.py``) exposing::

    PRESETS: tuple[str, ...]                   # always includes "tiny"
    get_config(preset: str) -> train.config.Config

and the experiment it names (``config.experiment``) is built by :func:`train.experiments.build`. A config file
outside ``train/`` may bring its own experiment by defining ``build(config) -> Experiment``.

The :class:`Experiment` supplies the model's parameters, its loss, and its data; the trainer supplies the
optimizer, EMA, mixed precision, sharding, checkpoints, metrics and the validation loss per flow-time bin.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import pathlib
import sys
import types
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Experiment", "load_experiment", "CONFIG_DIR"]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"

Batch = Any  # a pytree of numpy arrays, every leaf with the batch axis first and a static shape
Params = Any


class Experiment(abc.ABC):
    """One experiment: parameters, loss and data. Subclasses implement the three abstract methods.

    Attributes:
      config: the resolved :class:`train.config.Config`.
      resume_safe_keys: dotted config keys (beyond :data:`train.resume.RESUME_SAFE_KEYS`) that may change when a
        run resumes because only evaluation or samples read them (e.g. ``data.eval_points``).
    """

    resume_safe_keys: tuple[str, ...] = ()

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def init_params(self, key) -> Params:
        """Fresh parameters from a PRNG key (traced under ``jax.eval_shape`` and ``jax.jit``: pure JAX only)."""

    @abc.abstractmethod
    def loss_fn(self, params: Params, batch: Batch, key) -> tuple[Any, dict]:
        """``(loss, aux)``: a scalar loss and a dict with ``per_example [b]`` losses and flow times ``t [b]``
        (validation curves per t-bin), optionally ``weight [b]`` (0 for padding rows) and scalar entries, which
        are logged. Pure JAX: it runs inside the jitted train step."""

    @abc.abstractmethod
    def train_batches(self, seed: int, position: int) -> Iterator[tuple[Batch, int]]:
        """Endless ``(batch, next_position)`` pairs starting at the integer ``position``; the order is a pure
        function of ``(seed, position)``, so a checkpointed position resumes exactly."""

    def eval_batches(self) -> Iterable[Batch]:
        """A fixed validation set (same batch structure as training); empty by default."""
        return ()

    def evaluate(self, params: Params, step: int, workdir: pathlib.Path) -> dict[str, float]:
        """Experiment-specific scalars (e.g. a sample-quality metric), logged with the validation loss."""
        return {}

    def write_samples(self, params: Params, step: int, workdir: pathlib.Path) -> list[pathlib.Path]:
        """Writes sample files (PNG, audio) for a human to look at; returns their paths."""
        return []


def load_experiment(config: str | pathlib.Path | types.ModuleType) -> types.ModuleType:
    """The experiment module named by ``config``: a name (``toy2d``), a path to a config file, or a module.

    Files under ``train/configs`` are imported as ``train.configs.<name>``; any other file under a unique name.
    """
    if isinstance(config, types.ModuleType):
        module = config
    else:
        text = str(config)
        path = pathlib.Path(text) if text.endswith(".py") else CONFIG_DIR / f"{text}.py"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")
            raise ValueError(f"--config: expected a config file or one of {known}, got {text!r} ({path} not found)")
        path = path.resolve()
        if path.parent == CONFIG_DIR:
            module = importlib.import_module(f"train.configs.{path.stem}")
        else:
            name = f"_fmjax_experiment_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclass type hints resolve through sys.modules
            spec.loader.exec_module(module)
    missing = [a for a in ("PRESETS", "get_config") if not hasattr(module, a)]
    if missing:
        raise ValueError(f"--config: {module.__name__} is not an experiment config, it lacks {missing}")
    if not hasattr(module, "build"):  # configs are data; the experiment they name lives in train.experiments
        from train.experiments import build

        module.build = build
    if "tiny" not in module.PRESETS:
        raise ValueError(f"--config: {module.__name__}.PRESETS must include 'tiny', got {module.PRESETS}")
    return module
