"""Matcha's ``BasicTransformerBlock`` (as CosyVoice 1/2 use it): pre-LN self-attention and feed-forward.

``x = x + attn1(norm1(x))``; ``x = x + ff(norm3(x))``. LayerNorms have eps 1e-5 and affine params;
``attn1`` is :class:`fmjax.nn.attention.MultiHeadAttention` (bias-free q/k/v, biased output). There is no
positional encoding. The feed-forward is ``proj_out(act(proj_in(x)))`` with ``act`` one of

* ``"gelu"``: exact (erf) GELU — diffusers ``GELU``;
* ``"gelu_tanh"``: tanh-approximated GELU — diffusers ``GELU(approximate="tanh")``;
* ``"snakebeta"``: Matcha's ``SnakeBeta`` with log-scale parameters,
  ``y + sin²(y·exp(alpha)) / (exp(beta) + 1e-9)`` for ``y = proj_in(x)``.

Param names mirror torch: ``norm1``, ``attn1/{to_q,to_k,to_v,to_out}``, ``norm3``,
``ff/{proj_in,proj_out}`` (+ ``ff/alpha``, ``ff/beta`` for snake-beta).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fmjax.nn.attention import KVCache, MultiHeadAttention, init_kv_cache
from fmjax.typing import Array, Bool, Float

FF_ACTIVATIONS = ("gelu", "gelu_tanh", "snakebeta")


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """torch-compatible LayerNorm over the last axis (two-pass variance)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class FeedForward(nn.Module):
    """``proj_out(act(proj_in(x)))`` with inner width ``mult·d``; ``activation`` in :data:`FF_ACTIVATIONS`."""

    mult: int = 4
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        """``[b, t, d]`` -> ``[b, t, d]``."""
        if self.activation not in FF_ACTIVATIONS:
            raise ValueError(f"activation: expected one of {FF_ACTIVATIONS}, got {self.activation!r}")
        d = x.shape[-1]
        inner = self.mult * d
        h = nn.Dense(inner, name="proj_in")(x)  # [b, t, mult·d]
        if self.activation == "snakebeta":
            alpha = jnp.exp(self.param("alpha", nn.initializers.zeros, (inner,))).astype(h.dtype)
            beta = jnp.exp(self.param("beta", nn.initializers.zeros, (inner,))).astype(h.dtype)
            h = h + (1.0 / (beta + 1e-9)) * jnp.sin(h * alpha) ** 2
        else:
            h = nn.gelu(h, approximate=self.activation == "gelu_tanh")
        return nn.Dense(d, name="proj_out")(h)  # [b, t, d]


class TransformerBlock(nn.Module):
    """Pre-LN transformer block (no positional encoding), with an optional streaming K/V cache.

    Attributes:
      heads, head_dim: attention shape (inner width ``heads·head_dim``).
      ff_mult: feed-forward expansion.
      activation: feed-forward activation (:data:`FF_ACTIVATIONS`).
      norm_eps: LayerNorm epsilon.
    """

    heads: int
    head_dim: int
    ff_mult: int = 4
    activation: str = "gelu"
    norm_eps: float = 1e-5

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
        bias: Float[Array, "..."] | None = None,
    ) -> tuple[Float[Array, "b t d"], KVCache | None]:
        """Offline: ``mask`` broadcastable to ``[b, t, t]`` (True = visible) and/or an additive logit ``bias``
        (same broadcasting). Streaming: one chunk with its ``valid [b, t]`` frames and the layer's ring buffer
        (see :class:`MultiHeadAttention`).

        Returns:
          ``(y [b, t, d], new_cache)``; ``new_cache`` is None offline.
        """
        attn = MultiHeadAttention(self.heads, self.head_dim, name="attn1")
        h, cache = attn(
            layer_norm(self.norm_eps, "norm1")(x), mask, cache,
            valid=valid, chunk_size=chunk_size, num_left_chunks=num_left_chunks, bias=bias,
        )
        x = x + h
        x = x + FeedForward(self.ff_mult, self.activation, name="ff")(layer_norm(self.norm_eps, "norm3")(x))
        return x, cache

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dtype=jnp.float32) -> KVCache:
        """Empty ring buffer for this block's attention."""
        return init_kv_cache(batch, window, self.heads, self.head_dim, dtype)
