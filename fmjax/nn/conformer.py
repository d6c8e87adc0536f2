"""The conformer layer of CosyVoice2's encoder: pre-norm relative-position self-attention and a SiLU
feed-forward (WeNet ``ConformerEncoderLayer`` with no macaron feed-forward and no convolution module).

``x = x + self_attn(norm_mha(x))``; ``x = x + feed_forward(norm_ff(x))``, with ``feed_forward =
w_2(SiLU(w_1(·)))``. Both LayerNorms use eps 1e-12 in the original. Param names mirror torch:
``norm_mha``, ``self_attn/*`` (see :class:`fmjax.nn.relpos_attention.RelPositionAttention`), ``norm_ff``,
``feed_forward/{w_1, w_2}``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fmjax.nn.attention import KVCache, init_kv_cache
from fmjax.nn.relpos_attention import RelPositionAttention
from fmjax.nn.transformer import layer_norm
from fmjax.typing import Array, Bool, Float


class SiLUFeedForward(nn.Module):
    """``w_2(SiLU(w_1(x)))`` (WeNet ``PositionwiseFeedForward`` with swish).

    Attributes:
      units: inner width (``linear_units``).
    """

    units: int

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        """``[b, t, d]`` -> ``[b, t, d]``."""
        h = nn.silu(nn.Dense(self.units, name="w_1")(x))  # [b, t, units]
        return nn.Dense(x.shape[-1], name="w_2")(h)  # [b, t, d]


class ConformerLayer(nn.Module):
    """Pre-norm conformer layer without macaron/conv modules, optionally streaming through a K/V ring buffer.

    Attributes:
      heads: attention heads.
      linear_units: feed-forward inner width.
      norm_eps: LayerNorm epsilon (1e-12 in CosyVoice2).
    """

    heads: int
    linear_units: int
    norm_eps: float = 1e-12

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        mask: Bool[Array, "..."] | None = None,
        cache: KVCache | None = None,
        *,
        valid: Bool[Array, "b t"] | None = None,
        chunk_size: int = 0,
        num_left_chunks: int = -1,
    ) -> tuple[Float[Array, "b t d"], KVCache | None]:
        """Offline: ``mask`` broadcastable to ``[b, t, t]``. Streaming: one chunk, its ``valid [b, t]`` frames
        and this layer's ring buffer (see :class:`RelPositionAttention`).

        Returns:
          ``(y [b, t, d], new_cache)``; ``new_cache`` is None offline.
        """
        attn = RelPositionAttention(self.heads, name="self_attn")
        h, cache = attn(
            layer_norm(self.norm_eps, "norm_mha")(x), mask, cache,
            valid=valid, chunk_size=chunk_size, num_left_chunks=num_left_chunks,
        )
        x = x + h
        x = x + SiLUFeedForward(self.linear_units, name="feed_forward")(layer_norm(self.norm_eps, "norm_ff")(x))
        return x, cache

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dim: int, dtype=jnp.float32) -> KVCache:
        """Empty ring buffer of ``window`` slots for this layer's attention (width ``dim``)."""
        if dim % self.heads:
            raise ValueError(f"dim: width {dim} is not divisible by heads={self.heads}")
        return init_kv_cache(batch, window, self.heads, dim // self.heads, dtype)
