"""Short-time Fourier transforms with ``torch.stft`` / ``torch.istft`` semantics, time-major.

``stft`` returns ``[..., frames, n_fft // 2 + 1]`` (torch returns ``(..., bins, frames)``). With ``center=True``
the signal is reflect-padded by ``n_fft // 2`` on both sides first, so an ``L``-sample signal gives
``L // hop + 1`` frames. ``istft`` inverts it by windowed overlap-add divided by the summed squared window, then
trims the centre padding, exactly as torch does.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fmjax.typing import Array, Complex, Float

__all__ = ["hann_window", "frame", "overlap_add", "stft", "istft"]


def hann_window(n: int, periodic: bool = True) -> np.ndarray:
    """Hann window of length ``n`` (``periodic=True`` matches ``torch.hann_window`` defaults). float32 ``[n]``."""
    if n < 1:
        raise ValueError(f"n: expected a window length >= 1, got {n}")
    denom = n if periodic else max(n - 1, 1)
    k = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * k / denom)).astype(np.float32)


def _check_fft_args(n_fft: int, hop: int, window) -> np.ndarray:
    if not (isinstance(n_fft, int) and n_fft >= 2):
        raise ValueError(f"n_fft: expected an int >= 2, got {n_fft!r}")
    if not (isinstance(hop, int) and 1 <= hop <= n_fft):
        raise ValueError(f"hop: expected an int in [1, n_fft={n_fft}], got {hop!r}")
    if window is None:
        window = hann_window(n_fft)
    window = np.asarray(window, np.float32)
    if window.ndim != 1 or window.shape[0] > n_fft:
        raise ValueError(f"window: expected a 1-D array of length <= n_fft={n_fft}, got shape {window.shape}")
    if window.shape[0] < n_fft:  # torch centres a shorter window inside n_fft
        left = (n_fft - window.shape[0]) // 2
        window = np.pad(window, (left, n_fft - window.shape[0] - left))
    return window


def frame(x: Float[Array, "... L"], n_fft: int, hop: int) -> Float[Array, "... f n"]:
    """Slices ``x`` into ``1 + (L - n_fft) // hop`` frames of ``n_fft`` samples, ``hop`` apart."""
    length = x.shape[-1]
    if length < n_fft:
        raise ValueError(f"x: expected at least n_fft={n_fft} samples along the last axis, got {length}")
    n_frames = 1 + (length - n_fft) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return x[..., idx]  # [..., f, n]


def overlap_add(frames: Float[Array, "... f n"], hop: int) -> Float[Array, "... L"]:
    """Sums frames ``hop`` apart: the output has ``n + hop * (f - 1)`` samples."""
    n_frames, n = frames.shape[-2], frames.shape[-1]
    lead = frames.shape[:-2]
    if n % hop == 0:
        # n = r·hop: frame i covers hop-blocks i..i+r-1, so sum r shifted copies block-wise (no scatter).
        r = n // hop
        blocks = frames.reshape(*lead, n_frames, r, hop)
        out = jnp.zeros((*lead, n_frames + r - 1, hop), frames.dtype)
        for j in range(r):
            out = out.at[..., j : j + n_frames, :].add(blocks[..., j, :])
        return out.reshape(*lead, (n_frames + r - 1) * hop)
    total = n + hop * (n_frames - 1)
    idx = (np.arange(n_frames)[:, None] * hop + np.arange(n)[None, :]).reshape(-1)
    out = jnp.zeros((*lead, total), frames.dtype)
    return out.at[..., idx].add(frames.reshape(*lead, n_frames * n))


def _envelope(window: np.ndarray, n_frames: int, hop: int) -> np.ndarray:
    """Overlap-added squared window ``[n + hop·(f − 1)]`` (numpy)."""
    n = window.shape[0]
    env = np.zeros(n + hop * (n_frames - 1), np.float64)
    for i in range(n_frames):
        env[i * hop : i * hop + n] += window.astype(np.float64) ** 2
    return env.astype(np.float32)


def stft(
    x: Float[Array, "... L"],
    n_fft: int,
    hop: int,
    window=None,
    *,
    center: bool = True,
    pad_mode: str = "reflect",
) -> Complex[Array, "... f bins"]:
    """Complex one-sided STFT ``[..., frames, n_fft // 2 + 1]`` like ``torch.stft(..., return_complex=True)``.

    Args:
      x: ``[..., L]`` real signal.
      n_fft: FFT size; hop: frame advance; window: ``[win]`` with ``win <= n_fft`` (default periodic Hann).
      center: reflect-pad ``n_fft // 2`` samples on both sides (torch's default).
      pad_mode: ``"reflect"`` or ``"constant"`` (zeros), used when ``center``.
    """
    window = _check_fft_args(n_fft, hop, window)
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode: expected 'reflect' or 'constant', got {pad_mode!r}")
    x = jnp.asarray(x)
    if center:
        half = n_fft // 2
        if pad_mode == "reflect" and x.shape[-1] <= half:
            raise ValueError(f"x: reflect padding needs more than n_fft//2={half} samples, got {x.shape[-1]}")
        pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
        x = jnp.pad(x, pad, mode=pad_mode)
    frames = frame(x, n_fft, hop) * window  # [..., f, n]
    return jnp.fft.rfft(frames, n=n_fft, axis=-1)  # [..., f, bins]


def istft(
    spec: Complex[Array, "... f bins"],
    n_fft: int,
    hop: int,
    window=None,
    *,
    center: bool = True,
    length: int | None = None,
) -> Float[Array, "... L"]:
    """Inverse of :func:`stft` like ``torch.istft``: ``[..., frames, bins] -> [..., hop * (frames - 1)]``
    when ``center`` (or ``length`` samples if given)."""
    window = _check_fft_args(n_fft, hop, window)
    if spec.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"spec: expected {n_fft // 2 + 1} frequency bins last, got shape {spec.shape}")
    n_frames = spec.shape[-2]
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * window  # [..., f, n]
    y = overlap_add(frames, hop)
    env = _envelope(window, n_frames, hop)  # numpy: a constant of the trace, so istft jits
    start = n_fft // 2 if center else 0
    end = y.shape[-1] - (n_fft // 2 if center else 0)
    if length is not None:
        end = min(start + length, y.shape[-1])
    if np.any(env[start:end] < 1e-11):
        raise ValueError("window: the summed squared window vanishes inside the signal (NOLA violated)")
    y = y[..., start:end] / env[start:end]
    if length is not None and y.shape[-1] < length:
        y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, length - y.shape[-1])])
    return y
