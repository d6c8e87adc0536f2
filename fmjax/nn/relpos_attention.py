"""ESPnet relative-position self-attention (Transformer-XL style), as in the CosyVoice2 conformer encoder.

For a query at absolute position ``i`` and a key at position ``j`` the logit is

    ((q_i + u)·k_j + (q_i + v)·P(i - j)) / sqrt(k),      P(r) = linear_pos(pe(r)),

with per-head learned biases ``u = pos_bias_u``, ``v = pos_bias_v`` ``[h, k]``, a bias-free ``linear_pos`` and
the sinusoid ``pe(r) = [sin(r·w_0), cos(r·w_0), sin(r·w_1), ...]`` (sin at even channels, cos at odd ones,
``w_i = 10000^(-2i/d)``). The originals build ``P`` for ``r = t-1 .. -(t-1)`` and use the pad/reshape
"rel_shift" trick; here the term is gathered directly from the positions, which gives the same numbers and
also works for a streaming step whose keys sit in a ring buffer with arbitrary absolute positions.

Offline (``cache=None``) positions are ``0 .. t-1``. Streaming, the chunk is written into a
:class:`fmjax.nn.attention.KVCache` first (slots carry their int32 absolute positions) and the chunk mask is
rebuilt from positions, so relative positions ``i - j`` stay exact however long the stream runs.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from fmjax.nn.attention import (
    KVCache,
    chunk_positions,
    dot_product_attention,
    init_kv_cache,
    kv_cache_write,
    kv_rows,
)
from fmjax.nn.masks import chunk_visibility, fill_empty_rows
from fmjax.typing import Array, Bool, Float, Int


def rel_pos_table(r_min: int, r_max: int, dim: int) -> Float[Array, "r d"]:
    """Sinusoids ``pe(r)`` for ``r = r_min .. r_max`` (ascending), ``[r_max - r_min + 1, dim]`` float32.

    Computed in float32 in torch's order (``r·w`` with ``w = exp(2i·(-ln(10000)/d))``), so values match the
    originals' table ``pe`` (which holds rows ``+(T-1) .. -(T-1)``, i.e. the reverse order).
    """
    if dim % 2:
        raise ValueError(f"dim: expected an even width, got {dim}")
    if r_max < r_min:
        raise ValueError(f"r_max: expected >= r_min = {r_min}, got {r_max}")
    freq = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * jnp.float32(-(math.log(10000.0) / dim)))  # [d/2]
    r = jnp.arange(r_min, r_max + 1, dtype=jnp.float32)[:, None]  # [r, 1]
    angle = r * freq  # [r, d/2]
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(r.shape[0], dim)  # [r, d]


def relative_logits(
    qv: Float[Array, "b t h k"],
    pos_proj: Float[Array, "r h k"],
    q_pos: Int[Array, "b t"],
    k_pos: Int[Array, "b s"],
    r_min: int,
) -> Float[Array, "b h t s"]:
    """The position term ``(q_i + v)·P(i - j)`` for every query/key pair.

    Args:
      qv: queries plus ``pos_bias_v``.
      pos_proj: ``P(r)`` for ``r = r_min .. r_min + R - 1``.
      q_pos, k_pos: absolute positions; pairs whose ``i - j`` falls outside the table (empty slots) are
        clipped to its edge and must be masked by the caller.

    Returns:
      ``[b, h, t, s]`` float32.
    """
    table_logits = jnp.einsum("bthk,rhk->bhtr", qv, pos_proj, preferred_element_type=jnp.float32)  # [b, h, t, r]
    index = jnp.clip(q_pos[:, :, None] - k_pos[:, None, :] - r_min, 0, pos_proj.shape[0] - 1)  # [b, t, s]
    return jnp.take_along_axis(table_logits, index[:, None], axis=-1)  # [b, h, t, s]


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative positions (torch ``RelPositionMultiHeadedAttention``).

    Params (torch names): ``linear_q/linear_k/linear_v/linear_out`` (with bias), ``linear_pos`` (no bias),
    ``pos_bias_u``, ``pos_bias_v`` ``[h, k]``.

    Attributes:
      heads: ``h``; the head dim is ``d / h``.
    """

    heads: int

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
        """Offline (``cache=None``): ``x`` is the whole sequence at positions ``0 .. t-1`` and ``mask``
        (bool, True = visible) broadcasts to ``[b, t, t]``. Streaming: ``x`` is one chunk at positions
        ``cache.count[b] + 0 .. t-1`` (per row), ``valid [b, t]`` its frame mask; it is written into the ring buffer and
        attends to the slots that :func:`fmjax.nn.masks.chunk_visibility` allows (``mask`` must be None).

        Returns:
          ``(y [b, t, d], new_cache)``; ``new_cache`` is None offline.
        """
        b, t, d = x.shape
        if d % self.heads:
            raise ValueError(f"x: width {d} is not divisible by heads={self.heads}")
        k_dim = d // self.heads

        def proj(name):
            return nn.Dense(d, name=name)(x).reshape(b, t, self.heads, k_dim)  # [b, t, h, k]

        q, k, v = proj("linear_q"), proj("linear_k"), proj("linear_v")
        bias_u = self.param("pos_bias_u", nn.initializers.xavier_uniform(), (self.heads, k_dim))
        bias_v = self.param("pos_bias_v", nn.initializers.xavier_uniform(), (self.heads, k_dim))
        if cache is None:
            q_pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))  # [b, t]
            k_pos, keys, values = q_pos, k, v
        else:
            if mask is not None or valid is None or chunk_size <= 0:
                raise ValueError("streaming attention takes valid=[b, t] and chunk_size > 0, and no mask")
            q_pos = chunk_positions(cache, t)  # [b, t]
            cache = kv_cache_write(cache, k, v, valid)
            keys, values, k_pos, _ = kv_rows(cache)  # [b, w, h, k], [b, w]
            mask = fill_empty_rows(chunk_visibility(q_pos, k_pos, chunk_size, num_left_chunks))  # [b, t, w]
        # Valid keys satisfy -(t-1) <= i - j <= s-1: offline s = t; streaming the ring holds the last w positions.
        r_min, r_max = -(t - 1), keys.shape[1] - 1
        pos_proj = nn.Dense(d, use_bias=False, name="linear_pos")(rel_pos_table(r_min, r_max, d))  # [r, d]
        pos_proj = pos_proj.reshape(-1, self.heads, k_dim)  # [r, h, k]
        scale = 1.0 / math.sqrt(k_dim)
        pos_logits = relative_logits(q + bias_v, pos_proj, q_pos, k_pos, r_min)  # [b, h, t, s]
        out = dot_product_attention(q + bias_u, keys, values, mask=mask, bias=pos_logits * scale, scale=scale)
        return nn.Dense(d, name="linear_out")(out.reshape(b, t, d)), cache  # [b, t, d]

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dim: int, dtype=jnp.float32) -> KVCache:
        """Empty ring buffer of ``window`` slots for a layer of width ``dim``."""
        return init_kv_cache(batch, window, self.heads, dim // self.heads, dtype)
