"""Distances between log-mel spectrograms, per example and masked: mel L1 and mel-cepstral distortion (MCD).

Both compare two mels frame by frame (``pred[b, f]`` with ``target[b, f]``): the frames must already be aligned,
as they are for a flow that generates exactly the ground truth's frame count. No time warping is done.

**Mel L1** of example ``b`` is the mean absolute difference over its valid frames and all ``m`` bins::

    L1_b = Σ_f Σ_k |pred[b,f,k] - target[b,f,k]| · mask[b,f]  /  (m · Σ_f mask[b,f])

**MCD** first turns each log-mel frame into a cepstrum with the orthonormal DCT-II over the mel bins
(``scipy.fft.dct(x, type=2, norm="ortho")``)::

    c[k] = s_k · Σ_n x[n] · cos(π k (2n + 1) / (2m)),   s_0 = sqrt(1/m),  s_k = sqrt(2/m) for k >= 1

then applies the usual MCD formula to the coefficients ``c_1 .. c_K`` (``K = n_cepstra``; ``c_0``, the frame's
log-energy, is left out unless ``include_c0``), in decibels, averaged over the valid frames::

    MCD_b = (10 / ln 10) · mean_f sqrt(2 · Σ_{k=1..K} (c_pred[b,f,k] - c_target[b,f,k])²)

The mels are CosyVoice's natural-log mel magnitudes, so this is the "MCD from log-mel" variant: figures compare
runs with each other; they are not on the scale of SPTK mel-cepstrum MCDs. Two facts the tests check: a constant
offset ``δ`` on every bin changes only ``c_0`` (by ``δ·sqrt(m)``), so it leaves the MCD at 0 (and adds
``(10/ln 10)·sqrt(2m)·|δ|`` with ``include_c0``); adding ``a`` times the ``k``-th DCT basis vector changes ``c_k``
alone, by ``a``.

Examples with no valid frame get 0 for both metrics (weight them out with ``mask.sum(1) > 0``).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from fmjax.typing import Array, Float

__all__ = ["MCD_SCALE", "dct_basis", "mel_cepstrum", "mel_l1", "mel_cepstral_distortion"]

MCD_SCALE = 10.0 / math.log(10.0)
"""``10 / ln 10``: the decibel factor of the MCD formula."""


@functools.lru_cache(maxsize=8)
def dct_basis(m: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``[m, m]`` (row ``k`` is the ``k``-th basis vector): ``c = D @ x``."""
    n = np.arange(m)
    basis = np.cos(np.pi * n[:, None] * (2 * n[None, :] + 1) / (2 * m)) * np.sqrt(2.0 / m)  # [k, n]
    basis[0] = np.sqrt(1.0 / m)
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


def _check(pred, target, mask):
    """Shapes and dtypes (host side, before any tracing); returns jnp ``(pred, target, mask [b, t])``."""
    for name, x in (("pred", pred), ("target", target)):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 3:
            raise ValueError(f"{name}: expected a log-mel of shape [b, t, m], got {shape if shape else type(x).__name__}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"target: expected the shape of pred {tuple(pred.shape)} (frames aligned), "
                         f"got {tuple(target.shape)}")
    b, t, _ = pred.shape
    if mask is None:
        mask = jnp.ones((b, t), jnp.float32)
    if tuple(getattr(mask, "shape", ())) != (b, t):
        raise ValueError(f"mask: expected shape {(b, t)} (one flag per frame), got {getattr(mask, 'shape', mask)}")
    return jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), jnp.asarray(mask, jnp.float32)


def _frame_mean(values: Float[Array, "b t"], mask: Float[Array, "b t"]) -> Float[Array, "b"]:
    frames = jnp.sum(mask, axis=1)  # [b]
    total = jnp.sum(jnp.where(mask > 0, values, 0.0), axis=1)  # padded frames may hold anything, even NaN
    return jnp.where(frames > 0, total / jnp.maximum(frames, 1.0), 0.0)


def mel_l1(
    pred: Float[Array, "b t m"], target: Float[Array, "b t m"], mask: Float[Array, "b t"] | None = None
) -> Float[Array, "b"]:
    """Mean absolute log-mel difference per example over its valid frames (see the module docstring).

    Args:
      pred, target: ``[b, t, m]`` log-mels, frames aligned.
      mask: ``[b, t]`` 1 at valid frames (default all valid).

    Returns:
      ``[b]`` float32 (0 for an example without valid frames).
    """
    pred, target, mask = _check(pred, target, mask)
    per_frame = jnp.mean(jnp.abs(pred - target), axis=-1)  # [b, t]
    return _frame_mean(per_frame, mask)


def mel_cepstrum(log_mel: Float[Array, "... m"], n_cepstra: int | None = None) -> Float[Array, "... k"]:
    """Orthonormal DCT-II of log-mel frames over the bins: coefficients ``c_0 .. c_{n_cepstra-1}`` (all ``m`` by
    default)."""
    m = log_mel.shape[-1]
    k = m if n_cepstra is None else n_cepstra
    if not (isinstance(k, int) and 1 <= k <= m):
        raise ValueError(f"n_cepstra: expected an int in [1, {m}] (the mel bins), got {n_cepstra!r}")
    basis = jnp.asarray(dct_basis(m)[:k])  # [k, m]
    return jnp.einsum("...m,km->...k", jnp.asarray(log_mel, jnp.float32), basis)  # [..., k]


def mel_cepstral_distortion(
    pred: Float[Array, "b t m"],
    target: Float[Array, "b t m"],
    mask: Float[Array, "b t"] | None = None,
    *,
    n_cepstra: int = 24,
    include_c0: bool = False,
) -> Float[Array, "b"]:
    """Mel-cepstral distortion in dB per example, frames aligned (formula in the module docstring).

    Args:
      pred, target: ``[b, t, m]`` natural-log mels.
      mask: ``[b, t]`` 1 at valid frames (default all valid).
      n_cepstra: ``K``, the coefficients ``c_1 .. c_K`` compared (24, as SPTK's usual order; at most ``m - 1``).
      include_c0: also compare ``c_0`` (the frame's overall level).

    Returns:
      ``[b]`` float32 MCD in dB (0 for an example without valid frames).
    """
    pred, target, mask = _check(pred, target, mask)
    m = pred.shape[-1]
    if not (isinstance(n_cepstra, int) and not isinstance(n_cepstra, bool) and 1 <= n_cepstra <= m - 1):
        raise ValueError(f"n_cepstra: expected an int in [1, {m - 1}] (m = {m} mel bins), got {n_cepstra!r}")
    diff = mel_cepstrum(pred - target, n_cepstra + 1)  # [b, t, K + 1]; the DCT is linear
    if not include_c0:
        diff = diff[..., 1:]  # [b, t, K]
    per_frame = MCD_SCALE * jnp.sqrt(2.0 * jnp.sum(jnp.square(diff), axis=-1))  # [b, t]
    return _frame_mean(per_frame, mask)
