"""Flow times: training t-samplers (drawn from a key) and inference time grids (arrays).

Time runs from 0 (noise) to 1 (data) throughout fmjax.

**Training samplers** map a uniform draw ``u ∈ [0, 1)`` through a monotone transform, so every sampler can be
*stratified*: with ``stratified=True`` a batch of ``b`` draws takes one ``u`` per equal bin ``[i/b, (i+1)/b)``
(in shuffled order), which lowers the variance of the batch loss without changing its expectation.

**Inference grids** are plain ``[n + 1]`` arrays from 0 to 1; a sampler takes them as data, so changing the
values never recompiles.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from fmjax.typing import Array, Float, Key

__all__ = [
    "TSampler", "Uniform", "CosineWarp", "LogitNormal", "ModeSampling", "T_SAMPLERS", "get_t_sampler",
    "linear_grid", "cosine_grid", "sway_grid", "time_grid", "GRIDS", "validate_grid",
]


@dataclasses.dataclass(frozen=True)
class TSampler:
    """Base class: ``t = transform(u)`` with ``u`` uniform on [0, 1).

    Attributes:
      stratified: draw one ``u`` per equal bin over the batch (shuffled) instead of i.i.d.
    """

    stratified: bool = dataclasses.field(default=False, kw_only=True)

    def transform(self, u: Float[Array, "..."]) -> Float[Array, "..."]:
        raise NotImplementedError  # each subclass defines its warp

    def __call__(self, key: Key, batch: int, dtype=jnp.float32) -> Float[Array, "b"]:
        """Draws ``[batch]`` training times in [0, 1]."""
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
        k_u, k_perm = jax.random.split(key)
        u = jax.random.uniform(k_u, (batch,), dtype)
        if self.stratified:
            u = (jnp.arange(batch, dtype=dtype) + u) / batch
            u = jax.random.permutation(k_perm, u)
        return self.transform(u)


@dataclasses.dataclass(frozen=True)
class Uniform(TSampler):
    """``t ~ U[0, 1)`` (CosyVoice2 at HEAD, Matcha)."""

    def transform(self, u):
        return u


@dataclasses.dataclass(frozen=True)
class CosineWarp(TSampler):
    """``t = 1 − cos(π u / 2)``: more draws near the noise end (CosyVoice before Jan 2026)."""

    def transform(self, u):
        return 1.0 - jnp.cos(0.5 * jnp.pi * u)


@dataclasses.dataclass(frozen=True)
class LogitNormal(TSampler):
    """``t = sigmoid(m + s·n)``, ``n ~ N(0, 1)`` (SD3). In fmjax's direction (t = 1 is data) SD3's ``m > 0``
    (more weight on noisy times) corresponds to ``m < 0`` here."""

    m: float = 0.0
    s: float = 1.0

    def __post_init__(self):
        if not self.s > 0:
            raise ValueError(f"s: expected a positive scale, got {self.s!r}")

    def transform(self, u):
        eps = jnp.finfo(u.dtype).eps
        return jax.nn.sigmoid(self.m + self.s * ndtri(jnp.clip(u, eps, 1.0 - eps)))


@dataclasses.dataclass(frozen=True)
class ModeSampling(TSampler):
    """SD3's mode sampling with heavy tails: ``t = 1 − u − s·(cos²(π u / 2) − 1 + u)``.

    The density is symmetric about 1/2, so the direction convention does not matter; ``s = 0`` is uniform,
    ``s > 0`` favours mid times. Monotone (a valid warp) for ``−1 ≤ s ≤ 2/(π − 2)``.
    """

    scale: float = 1.29

    def __post_init__(self):
        if not -1.0 <= self.scale <= 2.0 / (math.pi - 2.0):
            raise ValueError(f"scale: expected a value in [-1, {2 / (math.pi - 2):.3f}], got {self.scale!r}")

    def transform(self, u):
        return 1.0 - u - self.scale * (jnp.cos(0.5 * jnp.pi * u) ** 2 - 1.0 + u)


T_SAMPLERS = {"uniform": Uniform, "cosine": CosineWarp, "logit_normal": LogitNormal, "mode": ModeSampling}


def get_t_sampler(name: str | TSampler, **kwargs) -> TSampler:
    """Builds a training t-sampler by name (``uniform``, ``cosine``, ``logit_normal``, ``mode``)."""
    if isinstance(name, TSampler):
        return name
    if not isinstance(name, str) or name not in T_SAMPLERS:
        raise ValueError(f"t sampler: expected one of {sorted(T_SAMPLERS)}, got {name!r}")
    return T_SAMPLERS[name](**kwargs)


# ----------------------------------------------------------------------------------------- inference grids


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected the number of ODE steps (NFE per solver stage) as an int >= 1, got {n!r}")
    return int(n)


def linear_grid(n: int) -> np.ndarray:
    """``[n + 1]`` evenly spaced times ``τ = i / n``."""
    return np.linspace(0.0, 1.0, _check_n(n) + 1, dtype=np.float32)


def cosine_grid(n: int) -> np.ndarray:
    """CosyVoice's grid ``1 − cos(π τ / 2)``: small steps near the noise end."""
    tau = np.linspace(0.0, 1.0, _check_n(n) + 1, dtype=np.float32)
    return (1.0 - np.cos(tau * 0.5 * np.pi)).astype(np.float32)


def sway_grid(n: int, s: float = -1.0) -> np.ndarray:
    """F5-TTS's sway sampling ``τ + s·(cos(π τ / 2) − 1 + τ)``; ``s = −1`` is the cosine grid, ``s = 0`` linear.
    Negative ``s`` packs steps near the noise end. ``s`` must lie in [−1, 1], where the grid is increasing."""
    if not -1.0 <= s <= 1.0:
        raise ValueError(f"s: expected a sway coefficient in [-1, 1], got {s!r}")
    tau = np.linspace(0.0, 1.0, _check_n(n) + 1, dtype=np.float32)
    return (tau + s * (np.cos(0.5 * np.pi * tau) - 1.0 + tau)).astype(np.float32)


GRIDS = {"linear": linear_grid, "cosine": cosine_grid, "sway": sway_grid}


def time_grid(kind="cosine", n: int | None = None, **kwargs) -> np.ndarray:
    """An inference grid ``[n + 1]``: by name (``linear``, ``cosine``, ``sway`` with ``s=``) or any user array.

    Example: ``time_grid("cosine", 10)`` is CosyVoice's default; ``time_grid([0, .3, .7, 1])`` a custom one.
    """
    if isinstance(kind, str):
        if kind not in GRIDS:
            raise ValueError(f"kind: expected one of {sorted(GRIDS)} or an array of times, got {kind!r}")
        if n is None:
            raise ValueError(f"n: the {kind!r} grid needs the number of steps n")
        return GRIDS[kind](n, **kwargs)
    if n is not None or kwargs:
        raise ValueError("n/kwargs: only named grids take them; a user array is used as given")
    return validate_grid(kind)


def validate_grid(grid):
    """Checks a grid: 1-D with at least 2 points; if concrete, finite, increasing, within [0, 1].

    Traced grids (inside ``jit``) can only be checked for shape; returns ``grid`` unchanged.
    """
    if isinstance(grid, jax.core.Tracer):
        if grid.ndim != 1 or grid.shape[0] < 2:
            raise ValueError(f"grid: expected a 1-D array of n + 1 >= 2 times, got shape {grid.shape}")
        return grid
    arr = np.asarray(grid, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"grid: expected a 1-D array of n + 1 >= 2 times (NFE >= 1), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"grid: expected finite times, got {arr}")
    if arr[0] < 0.0 or arr[-1] > 1.0:
        raise ValueError(f"grid: expected times within [0, 1], got range [{arr[0]}, {arr[-1]}]")
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"grid: expected strictly increasing times, got {arr}")
    return grid
