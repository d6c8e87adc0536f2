"""Rotary position embedding with interleaved pairs, as x-transformers (2.x) applies it in F5-TTS/CosyVoice3.

Channel pair ``(2i, 2i+1)`` of the first ``rot_dim`` channels is rotated by the angle ``p·θ_i`` of its frame's
absolute position ``p``, with ``θ_i = base^(-2i/rot_dim)``:

``y[2i] = x[2i]·cos − x[2i+1]·sin``,  ``y[2i+1] = x[2i+1]·cos + x[2i]·sin``.

Channels from ``rot_dim`` on pass unchanged (partial rotary). The F5-TTS/CosyVoice3 DiT applies this to the
*flat* ``[b, t, heads·head_dim]`` projections with ``rot_dim = head_dim``, so only the first head is rotated.
Positions are int arrays, so a streaming step rotates a chunk at its true offset.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fmjax.typing import Array, Float, Int


def rotary_inv_freq(rot_dim: int, base: float = 10000.0) -> np.ndarray:
    """``[rot_dim / 2]`` float32 frequencies ``1 / base^(2i / rot_dim)``, with x-transformers' float32 arithmetic
    (the exponent and the power are float32 operations), so that they equal the torch buffer ``inv_freq``."""
    if rot_dim < 2 or rot_dim % 2:
        raise ValueError(f"rot_dim: expected an even width >= 2, got {rot_dim}")
    exponent = np.arange(0, rot_dim, 2, dtype=np.float32) / np.float32(rot_dim)  # [rot_dim / 2]
    return (np.float32(1.0) / np.power(np.float32(base), exponent)).astype(np.float32)


def rotary_angles(positions: Int[Array, "*t"], rot_dim: int, base: float = 10000.0) -> Float[Array, "*t r"]:
    """Angles ``p·θ_i`` per position, each repeated for its pair: ``[..., t, rot_dim]`` holding
    ``[pθ0, pθ0, pθ1, pθ1, …]`` (x-transformers' ``freqs``; the product is one float32 rounding, as in torch)."""
    inv = jnp.asarray(rotary_inv_freq(rot_dim, base))
    angles = jnp.asarray(positions).astype(jnp.float32)[..., None] * inv  # [..., t, rot_dim / 2]
    return jnp.repeat(angles, 2, axis=-1)  # [..., t, rot_dim]


def apply_rotary(
    x: Float[Array, "b t c"], positions: Int[Array, "t"], rot_dim: int, base: float = 10000.0
) -> Float[Array, "b t c"]:
    """Rotates the first ``rot_dim`` channels of ``x`` in interleaved pairs by the frames' positions.

    Args:
      x: ``[b, t, c]`` with ``c >= rot_dim`` (e.g. flat q or k of all heads).
      positions: ``[t]`` (or ``[b, t]``) absolute frame positions.
      rot_dim: even number of leading channels to rotate.
      base: frequency base.

    Returns:
      ``[b, t, c]`` in ``x``'s dtype; channels ``rot_dim..c-1`` unchanged.
    """
    if x.shape[-1] < rot_dim:
        raise ValueError(f"x: expected at least rot_dim={rot_dim} channels, got {x.shape[-1]}")
    angles = rotary_angles(positions, rot_dim, base)  # [(b,) t, rot_dim]
    if angles.ndim == 2:
        angles = angles[None]  # [1, t, rot_dim]
    rot = x[..., :rot_dim].astype(jnp.float32)
    pairs = rot.reshape(rot.shape[:-1] + (rot_dim // 2, 2))  # [b, t, rot_dim / 2, 2]
    half_turn = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(rot.shape)  # [b, t, rot_dim]
    rotated = rot * jnp.cos(angles) + half_turn * jnp.sin(angles)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., rot_dim:]], axis=-1)  # [b, t, c]
