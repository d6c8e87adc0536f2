"""Probability paths of conditional flow matching, written per example (``jax.vmap`` them over a batch).

The conditional-OT path of Lipman et al. (used by Matcha-TTS with ``σ = 1e-4`` and CosyVoice with ``σ = 1e-6``)::

    x_t = (1 − (1 − σ)·t)·x0 + t·x1,      u_t = d x_t / dt = x1 − (1 − σ)·x0

with ``x0`` the noise sample and ``t`` running from noise (0) to data (1). ``σ = 0`` is the rectified-flow
path (Liu et al.), a straight line from ``x0`` to ``x1``.
"""

from __future__ import annotations

import dataclasses

from fmjax.typing import Array, Float

__all__ = ["CondOTPath", "rectified_path"]


@dataclasses.dataclass(frozen=True)
class CondOTPath:
    """Conditional optimal-transport path with minimum noise level ``sigma_min`` (0 ≤ σ < 1).

    At ``t = 0`` the sample is ``x0``; at ``t = 1`` it is ``x1 + σ·x0``.
    """

    sigma_min: float = 0.0

    def __post_init__(self):
        s = self.sigma_min
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ValueError(f"sigma_min: expected a float in [0, 1), got {s!r}")

    def interpolate(self, x0: Float[Array, "..."], x1: Float[Array, "..."], t) -> Float[Array, "..."]:
        """``x_t`` for one example (``t`` a scalar, or broadcastable against ``x0``)."""
        return (1.0 - (1.0 - self.sigma_min) * t) * x0 + t * x1

    def velocity(self, x0: Float[Array, "..."], x1: Float[Array, "..."], t=None) -> Float[Array, "..."]:
        """The conditional target ``u_t = x1 − (1 − σ)·x0`` (independent of ``t`` on this path)."""
        del t
        return x1 - (1.0 - self.sigma_min) * x0


def rectified_path() -> CondOTPath:
    """The rectified-flow path: ``CondOTPath(sigma_min=0)``."""
    return CondOTPath(0.0)
