"""Blocks of the F5-TTS / CosyVoice3 DiT: causal convolutional position embedding, rotary self-attention, and
the adaLN-zero transformer block — each with its streaming cache.

* :class:`ConvPositionEmbedding` — two causal grouped convs (left pad ``k-1``), each followed by Mish; its cache
  holds the last ``k-1`` input frames of each conv.
* :class:`RotaryAttention` — ``to_q/to_k/to_v`` (with bias), rotary positions on the **flat** q/k's first
  ``head_dim`` channels (so only head 0 is rotated, as in the originals), masked softmax attention, ``to_out``,
  and the output zeroed at padded query frames. Streaming uses the K/V ring buffer of
  :func:`fmjax.nn.attention.cached_attention` (keys are cached after rotation).
* :class:`DiTBlock` — ``h += gate_msa·attn(LN(h)·(1+scale_msa)+shift_msa)``;
  ``h += gate_mlp·ff(LN(h)·(1+scale_mlp)+shift_mlp)`` with the six modulations from ``mod(SiLU(t_emb))`` in the
  order shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp. LayerNorms have no affine, eps 1e-6.
  The feed-forward is :class:`fmjax.nn.transformer.FeedForward` with tanh-GELU.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax.nn.attention import KVCache, cached_attention, chunk_positions, dot_product_attention, init_kv_cache
from fmjax.nn.conv import CausalConv1d, ConvCache
from fmjax.nn.rotary import apply_rotary
from fmjax.nn.transformer import FeedForward
from fmjax.nn.unet_blocks import mish
from fmjax.typing import Array, Bool, Float

NORM_EPS = 1e-6


def modulated_norm(
    x: Float[Array, "b t d"], shift: Float[Array, "b d"], scale: Float[Array, "b d"], eps: float = NORM_EPS
) -> Float[Array, "b t d"]:
    """``LN(x)·(1 + scale) + shift``: LayerNorm over channels without affine params (two-pass variance, as
    torch), then the per-example adaLN modulation broadcast over frames."""
    xf = x.astype(jnp.float32)
    centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
    normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return (normed.astype(x.dtype) * (1 + scale[:, None, :]) + shift[:, None, :]).astype(x.dtype)


class ConvPosCache(NamedTuple):
    """Streaming state of :class:`ConvPositionEmbedding`: the input histories of its two convs, ``[b, k-1, d]``."""

    conv1: ConvCache
    conv2: ConvCache


class ConvPositionEmbedding(nn.Module):
    """``mish(conv2(mish(conv1(x))))`` with causal grouped convs of ``kernel_size`` taps and ``groups`` groups.

    Params: ``conv1``, ``conv2`` (``kernel [k, d/groups, d]``, ``bias [d]``).
    """

    kernel_size: int = 31
    groups: int = 16

    @nn.compact
    def __call__(
        self, x: Float[Array, "b t d"], cache: ConvPosCache | None = None
    ) -> tuple[Float[Array, "b t d"], ConvPosCache | None]:
        """``x [b, t, d]`` -> ``(y [b, t, d], new_cache)``; ``new_cache`` is None offline."""
        d = x.shape[-1]
        h, c1 = CausalConv1d(d, self.kernel_size, groups=self.groups, name="conv1")(
            x, None if cache is None else cache.conv1
        )  # [b, t, d]
        h, c2 = CausalConv1d(d, self.kernel_size, groups=self.groups, name="conv2")(
            mish(h), None if cache is None else cache.conv2
        )  # [b, t, d]
        return mish(h), None if cache is None else ConvPosCache(c1, c2)

    @nn.nowrap
    def init_cache(self, batch: int, dim: int, dtype=jnp.float32) -> ConvPosCache:
        """Zero histories of ``kernel_size - 1`` frames for both convs."""
        zeros = ConvCache(jnp.zeros((batch, self.kernel_size - 1, dim), dtype))
        return ConvPosCache(zeros, zeros)


class RotaryAttention(nn.Module):
    """Multi-head self-attention with biased projections and rotary positions on the first ``head_dim`` flat
    channels of q and k. Params: ``to_q``, ``to_k``, ``to_v`` (``d -> heads·head_dim``), ``to_out``."""

    heads: int
    head_dim: int
    chunk_size: int = 0
    num_left_chunks: int = -1

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        mask: Bool[Array, "..."] | None,
        valid: Bool[Array, "b t"],
        cache: KVCache | None = None,
        *,
        return_aux: bool = False,
    ):
        """Offline (``cache=None``): frames at positions ``0..t-1``, ``mask`` broadcastable to ``[b, t, t]``.
        Streaming: ``x`` is one chunk at each row's positions ``cache.count[b] + 0..t-1``; the mask comes from the
        ring buffer's positions with ``chunk_size``/``num_left_chunks``, and ``mask`` must be None.
        ``valid [b, t]`` marks real frames: padded query frames get a zero output, padded keys are never cached.

        Returns:
          ``(y [b, t, d], new_cache)`` (``new_cache`` None offline); with ``return_aux`` also ``aux`` = flat
          ``q, k, v`` before and ``q_rope, k_rope`` after rotation, each ``[b, t, heads·head_dim]``.
        """
        b, t, d = x.shape
        inner = self.heads * self.head_dim
        q, k, v = (nn.Dense(inner, name=n)(x) for n in ("to_q", "to_k", "to_v"))  # [b, t, h·k]
        if cache is None:
            positions = jnp.arange(t, dtype=jnp.int32)  # [t] absolute frame positions
        else:
            positions = chunk_positions(cache, t)  # [b, t]
        q_rope, k_rope = (apply_rotary(a, positions, self.head_dim) for a in (q, k))

        def heads(a):
            return a.reshape(b, t, self.heads, self.head_dim)  # [b, t, h, k]

        if cache is None:
            out = dot_product_attention(heads(q_rope), heads(k_rope), heads(v), mask=mask)
        else:
            if mask is not None:
                raise ValueError("mask: a streaming step builds its mask from the cache positions; pass None")
            out, cache = cached_attention(
                heads(q_rope), heads(k_rope), heads(v), cache, valid,
                chunk_size=self.chunk_size, num_left_chunks=self.num_left_chunks,
            )  # [b, t, h, k]
        y = nn.Dense(d, name="to_out")(out.reshape(b, t, inner))  # [b, t, d]
        y = jnp.where(valid[..., None], y, 0)
        if return_aux:
            return y, cache, {"q": q, "k": k, "v": v, "q_rope": q_rope, "k_rope": k_rope}
        return y, cache


class DiTBlock(nn.Module):
    """adaLN-zero DiT block: ``(h, t_emb, mask, valid, cache) -> (h, new_cache)`` (``+ aux`` with ``return_aux``).

    Attributes:
      heads, head_dim: attention shape.
      ff_mult: feed-forward expansion (inner width ``ff_mult·d``).
      chunk_size, num_left_chunks: streaming chunk mask (used only with a cache).

    Params: ``mod`` (``d -> 6d``), ``attn`` (:class:`RotaryAttention`), ``ff/{proj_in, proj_out}``.
    """

    heads: int
    head_dim: int
    ff_mult: int = 2
    chunk_size: int = 0
    num_left_chunks: int = -1

    @nn.compact
    def __call__(
        self,
        h: Float[Array, "b t d"],
        t_emb: Float[Array, "b d"],
        mask: Bool[Array, "..."] | None,
        valid: Bool[Array, "b t"],
        cache: KVCache | None = None,
        *,
        return_aux: bool = False,
    ):
        """See the module docstring. Returns ``(h [b, t, d], new_cache)``; with ``return_aux`` also ``aux``:
        ``mod [b, 6d]``, ``attn_norm``, ``q``/``k``/``v``, ``q_rope``/``k_rope``, ``attn``, ``ff`` and the block
        output ``out`` (each ``[b, t, ·]``)."""
        d = h.shape[-1]
        mod = nn.Dense(6 * d, name="mod")(nn.silu(t_emb))  # [b, 6d]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)  # 6 x [b, d]
        attn_in = modulated_norm(h, shift_msa, scale_msa)
        attn, cache, aux = RotaryAttention(
            self.heads, self.head_dim, self.chunk_size, self.num_left_chunks, name="attn"
        )(attn_in, mask, valid, cache, return_aux=True)
        h = h + gate_msa[:, None, :] * attn
        ff = FeedForward(self.ff_mult, "gelu_tanh", name="ff")(modulated_norm(h, shift_mlp, scale_mlp))
        h = h + gate_mlp[:, None, :] * ff
        if not return_aux:
            return h, cache
        aux.update({"mod": mod, "attn_norm": attn_in, "attn": attn, "ff": ff, "out": h})
        return h, cache, aux

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dtype=jnp.float32) -> KVCache:
        """Empty ring buffer of ``window`` frames for this block's attention."""
        return init_kv_cache(batch, window, self.heads, self.head_dim, dtype)
