"""fmjax: conditional flow matching for speech generation in JAX/Flax.

The flow-matching core is importable from the top level::

    import fmjax
    loss = fmjax.CFMLoss(path=fmjax.CondOTPath(1e-6), t_sampler=fmjax.LogitNormal())
    x1, aux = fmjax.sample(velocity, x0, cond, fmjax.time_grid("cosine", 10), solver="euler")

Models, pipelines, converters and the research tools are submodules (``fmjax.models``, ``fmjax.token2mel``,
``fmjax.token2mel_stream``, ``fmjax.token2wav``, ``fmjax.convert``, ``fmjax.reflow``, ``fmjax.ablate``, ...);
they are imported on first attribute access (``fmjax.models.flow``), so ``import fmjax`` stays light. Layout
conventions (time-major ``[b, t, c]``) are in ``fmjax.typing`` and ``docs/DESIGN.md``.
"""

import importlib

from fmjax.cond import MelCond, null_condition
from fmjax.loss import CFMLoss, LossDraws, per_t_bin, prompt_prefix
from fmjax.noise import cosyvoice_noise
from fmjax.paths import CondOTPath, rectified_path
from fmjax.samplers import (
    EULER,
    HEUN,
    MIDPOINT,
    RK4,
    SOLVERS,
    Solver,
    classifier_free_guidance,
    count_nfe,
    get_solver,
    sample,
)
from fmjax.timesteps import (
    GRIDS,
    T_SAMPLERS,
    CosineWarp,
    LogitNormal,
    ModeSampling,
    TSampler,
    Uniform,
    cosine_grid,
    get_t_sampler,
    linear_grid,
    sway_grid,
    time_grid,
)

__version__ = "0.1.0"

_SUBMODULES = frozenset({
    "ablate", "audio", "checkpoint", "cli", "convert", "data", "griffin_lim", "metrics", "models", "nn", "pipelines",
    "meanflow", "plotting", "reflow",
    "signal", "streaming", "token2mel", "token2mel_stream", "token2wav", "toy", "typing", "vocoder_stream",
})

__all__ = [
    "MelCond", "null_condition",
    "CFMLoss", "LossDraws", "per_t_bin", "prompt_prefix",
    "cosyvoice_noise",
    "CondOTPath", "rectified_path",
    "EULER", "HEUN", "MIDPOINT", "RK4", "SOLVERS", "Solver", "classifier_free_guidance", "count_nfe", "get_solver",
    "sample",
    "GRIDS", "T_SAMPLERS", "CosineWarp", "LogitNormal", "ModeSampling", "TSampler", "Uniform", "cosine_grid",
    "get_t_sampler", "linear_grid", "sway_grid", "time_grid",
]


def __getattr__(name: str):
    """Imports a submodule on first access (``fmjax.token2wav``) without loading every model at ``import fmjax``."""
    if name in _SUBMODULES:
        return importlib.import_module(f"fmjax.{name}")
    raise AttributeError(f"module 'fmjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
