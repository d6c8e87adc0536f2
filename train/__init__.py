"""The fmjax training application: ``python -m train --config train/configs/<name>.py --preset tiny --workdir DIR``.

Modules: :mod:`train.config` (frozen configs, ``--set`` overrides), :mod:`train.experiment` (the interface an
experiment implements), :mod:`train.state`, :mod:`train.optim`, :mod:`train.step` (the pure jitted step),
:mod:`train.sharding` (mesh, data parallel, FSDP), :mod:`train.checkpoint` (orbax, verified resume),
:mod:`train.metrics` (JSON lines, TensorBoard, progress, NaN/inf checks), :mod:`train.plots`,
:mod:`train.loop` (:func:`train.loop.run`). Experiments live in ``train/configs/``.
"""

from train.config import Config, OptimConfig, TrainConfig, apply_overrides
from train.experiment import Experiment, load_experiment
from train.loop import RunResult, run
from train.state import TrainState

__all__ = ["Config", "OptimConfig", "TrainConfig", "apply_overrides", "Experiment", "load_experiment", "RunResult",
           "run", "TrainState"]
