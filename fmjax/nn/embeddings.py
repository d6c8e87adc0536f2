"""Flow-time embeddings: the sinusoidal features of Matcha/CosyVoice/F5-TTS and the two-layer MLP on top.

The torch originals compute ``(scale * t) * freq`` with ``freq_k = exp(-k * ln(10000) / (half - 1))`` and
concatenate ``[sin | cos]``. The frequencies are computed here once in float64 and rounded to float32 (what
torch's float32 ``exp`` returns for these arguments), and the product is taken in the same order as torch,
because at ``scale = 1000`` the sine arguments reach ~1000 rad and a one-ulp difference would show.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fmjax.typing import Array, Float


def _frequencies(dim: int) -> np.ndarray:
    half = dim // 2
    arg = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000.0) / (half - 1))  # float32, as torch
    return np.exp(arg.astype(np.float64)).astype(np.float32)


def sinusoidal_embedding(t: Float[Array, "b"], dim: int, scale: float = 1000.0) -> Float[Array, "b d"]:
    """Sinusoidal features of the flow time, ``[sin(scale·t·f) | cos(scale·t·f)]``.

    Args:
      t: ``[b]`` flow times (a scalar is treated as ``[1]``).
      dim: even feature width ``d`` (320 for CosyVoice2, 256 for CosyVoice3's DiT).
      scale: multiplies ``t`` before the frequencies (1000 in all the originals).

    Returns:
      ``[b, d]`` features in ``t``'s dtype (float32 for integer input).
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"dim: expected an even width >= 4, got {dim}")
    t = jnp.atleast_1d(jnp.asarray(t))
    if t.ndim != 1:
        raise ValueError(f"t: expected shape [b], got {t.shape}")
    dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.float32
    arg = (jnp.asarray(scale, dtype) * t.astype(dtype))[:, None] * jnp.asarray(_frequencies(dim), dtype)  # [b, d/2]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)  # [b, d]


class TimestepEmbedding(nn.Module):
    """``linear_2(SiLU(linear_1(features)))``: diffusers/Matcha ``TimestepEmbedding`` with ``act_fn='silu'``.

    Attributes:
      hidden_dim: width of ``linear_1`` (CosyVoice2: 4·channels = 1024).
      out_dim: width of ``linear_2``; defaults to ``hidden_dim``.
      zero_out: initialise ``linear_2`` to zero (kernel and bias), so the embedding starts as exactly 0: a MeanFlow
        student's second time embedding, added to a teacher's, leaves the teacher's output unchanged at init.
    """

    hidden_dim: int
    out_dim: int | None = None
    zero_out: bool = False

    @nn.compact
    def __call__(self, features: Float[Array, "b e"]) -> Float[Array, "b d"]:
        """``[b, e]`` sinusoidal features -> ``[b, d]`` time embedding."""
        h = nn.Dense(self.hidden_dim, name="linear_1")(features)  # [b, hidden]
        h = nn.silu(h)
        init = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros) if self.zero_out else {}
        return nn.Dense(self.out_dim or self.hidden_dim, name="linear_2", **init)(h)  # [b, d]
