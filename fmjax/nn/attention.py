"""Masked dot-product attention, a fixed-window K/V ring buffer for streaming, and diffusers-style MHA.

The pieces compose so that other estimators reuse them:

* :func:`dot_product_attention` — softmax attention of already projected ``q/k/v`` with a boolean mask
  and/or an additive bias (e.g. relative-position logits);
* :class:`KVCache` + :func:`kv_cache_write` — a ring buffer of ``w`` slots holding keys/values and the
  absolute frame position of each slot (``-1`` = empty or padded), plus each row's stream position ``count``
  (``int32[b]``: rows of one batch may stand at different positions);
* :func:`cached_attention` — one streaming step: write the chunk, build the chunk mask from absolute
  positions (:func:`fmjax.nn.masks.chunk_visibility`), attend over the ``w`` slots.

A step attends over the ring *after* writing the current chunk, so the ring holds the chunk plus ``w - c``
earlier frames. With ``L`` left chunks a step is exact when ``w >= (L + 1)·C``; with ``L = -1`` it is exact
as long as the stream is at most ``w`` frames long (later it is a sliding window of ``w`` frames).
Every shape is fixed by ``(b, w, h, k)``: the stream positions live in int32 arrays, never in Python.

**Idle rows.** A row whose chunk has no valid frame does not advance: its ``count`` stays, and its chunk is
written as empty slots (position ``-1``) into exactly the slots that the row's next real chunk overwrites
before it attends, so nothing it will ever see is lost. A batched step can therefore carry rows that have
nothing to compute without copying their buffers.

**Filled-prefix windows.** Until a row's stream has wrapped around the ring, its filled slots are a prefix
(slot = position mod ``w``), so a step attends only over the smallest of a few static window sizes that holds
every row's slots (:func:`window_buckets`: ``C, 2C, 4C, ...`` capped at ``w``), chosen from the positions by a
``lax.switch`` inside the one compiled step. The first chunks of a stream therefore do not pay for an empty ring;
the result is the same (the slots left out are empty, i.e. masked).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax.nn.masks import chunk_visibility, fill_empty_rows
from fmjax.typing import Array, Bool, Float, Int


class KVCache(NamedTuple):
    """Fixed-window K/V ring buffer of one attention layer.

    Attributes:
      keys: ``[b, w, h, k]``.
      values: ``[b, w, h, k]``.
      pos: ``[b, w]`` int32 absolute frame position held by each slot; ``-1`` = empty slot or padded frame.
      count: ``[b]`` int32 frames written so far per row (absolute position of the row's next chunk).
    """

    keys: Float[Array, "b w h k"]
    values: Float[Array, "b w h k"]
    pos: Int[Array, "b w"]
    count: Int[Array, "b"]


def init_kv_cache(batch: int, window: int, heads: int, head_dim: int, dtype=jnp.float32) -> KVCache:
    """An empty ring buffer: zero keys/values, every slot at position ``-1``, ``count = 0`` for every row."""
    if window < 1:
        raise ValueError(f"window: expected >= 1 slot, got {window}")
    shape = (batch, window, heads, head_dim)  # keys and values are distinct buffers (donation needs that)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.full((batch, window), -1, jnp.int32),
                   jnp.zeros((batch,), jnp.int32))


def kv_cache_write(
    cache: KVCache, k: Float[Array, "b c h k"], v: Float[Array, "b c h k"], valid: Bool[Array, "b c"]
) -> KVCache:
    """Writes a chunk of ``c <= w`` frames at each row's stream positions ``count .. count+c-1`` (slots ``pos % w``);
    frames with ``valid = False`` are stored with position ``-1`` so that no query ever sees them. A row with no
    valid frame is idle: it does not advance (see the module docstring)."""
    b, w = cache.pos.shape
    c = k.shape[1]
    if c > w:
        raise ValueError(f"k: a chunk of {c} frames does not fit a window of {w} slots")
    expected = (b, c) + cache.keys.shape[2:]
    if k.shape != expected or v.shape != expected:
        raise ValueError(f"k, v: expected shape {expected} to match the cache, got {k.shape} and {v.shape}")
    if valid.shape != (b, c):
        raise ValueError(f"valid: expected shape {(b, c)}, got {valid.shape}")
    if cache.count.shape != (b,):
        raise ValueError(f"cache.count: expected per-row positions of shape ({b},), got {cache.count.shape}")
    positions = chunk_positions(cache, c)  # [b, c]
    slots = positions % w  # [b, c]
    rows = jnp.arange(b)[:, None]  # [b, 1]
    active = jnp.any(valid, axis=1)  # [b]
    return KVCache(
        keys=cache.keys.at[rows, slots].set(k.astype(cache.keys.dtype)),  # in place when the cache is donated
        values=cache.values.at[rows, slots].set(v.astype(cache.values.dtype)),
        pos=cache.pos.at[rows, slots].set(jnp.where(valid, positions, -1)),
        count=cache.count + c * active.astype(jnp.int32),
    )


def check_kv_rows(cache: KVCache, b: int) -> None:
    """Raises ``ValueError`` unless ``cache`` was built for ``b`` rows."""
    if cache.pos.shape[0] != b:
        raise ValueError(f"cache: built for batch {cache.pos.shape[0]}, but x has batch {b}")


def kv_rows(cache: KVCache, window: int | None = None):
    """``(keys [b, w', h, k], values, pos [b, w'], count [b])``: the first ``window`` slots of the ring (default all
    ``w``: the buffers themselves)."""
    w = cache.pos.shape[1]
    if window is None or window == w:
        return cache.keys, cache.values, cache.pos, cache.count
    return cache.keys[:, :window], cache.values[:, :window], cache.pos[:, :window], cache.count


def chunk_positions(cache: KVCache, c: int) -> Int[Array, "b c"]:
    """Absolute positions ``[b, c]`` of the next chunk's frames of every row (``count + 0 .. c-1``)."""
    return cache.count[:, None] + jnp.arange(c, dtype=jnp.int32)[None, :]


def window_buckets(window: int, chunk: int) -> tuple[int, ...]:
    """The static window sizes a streaming step may attend over: ``chunk · 2^i`` below ``window``, then ``window``
    (e.g. ``(50, 100, 200, 400, 800, 1000)`` for a 1000-slot ring and 50-frame chunks)."""
    if window < 1 or chunk < 1:
        raise ValueError(f"window/chunk: expected positive sizes, got {window}/{chunk}")
    sizes, size = [], chunk
    while size < window:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (window,)


def filled_window(q_pos: Int[Array, "b c"], window: int) -> tuple[Int[Array, ""], tuple[int, ...]]:
    """``(index, sizes)``: the smallest of :func:`window_buckets` (``sizes``) that holds every slot the rows have
    filled once the chunk at positions ``q_pos`` is written (``window`` once a row's stream wraps around the ring).
    Exact: slot = position mod ``window``, so before a wrap the filled slots are ``0 .. max(q_pos)``."""
    sizes = window_buckets(window, q_pos.shape[1])
    need = jnp.max(q_pos[:, -1]) + 1  # slots 0 .. need-1 hold every written position (before a wrap)
    index = jnp.sum(jnp.asarray(sizes[:-1], jnp.int32) < need).astype(jnp.int32)
    return index, sizes


def dot_product_attention(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b s h k"],
    v: Float[Array, "b s h k"],
    mask: Bool[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    scale: float | None = None,
) -> Float[Array, "b t h k"]:
    """``softmax(q·kᵀ·scale + bias, masked) · v`` per head; logits and softmax in float32.

    Long sequences are processed in blocks of queries (a ``lax.map``), so that the ``[b, h, block, s]`` logits
    stay in cache instead of streaming a ``[b, h, t, s]`` array through memory; the result is the same.

    Args:
      q: ``[b, t, h, k]``; k, v: ``[b, s, h, k]``.
      mask: bool, True = visible, broadcastable to ``[b, t, s]`` (shared by heads) or ``[b, h, t, s]``
        when 4-D. Rows should have a visible key (see :func:`fmjax.nn.masks.fill_empty_rows`).
      bias: additive logits with the same broadcasting rules.
      scale: defaults to ``1/sqrt(k)``.

    Returns:
      ``[b, t, h, k]`` in ``v``'s dtype.
    """
    b, t, h, _ = q.shape
    s = k.shape[1]
    extras = {name: _as_4d(a, name, b, h, t, s) for name, a in (("mask", mask), ("bias", bias)) if a is not None}
    qh, kh, vh = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # head-major [b, h, t|s, k]
    out = _attention_head_major(qh, kh, vh, extras.get("mask"), extras.get("bias"), scale)
    return jnp.swapaxes(out, 1, 2)  # [b, t, h, k]


def _attention_head_major(qh, kh, vh, mask, bias, scale):
    """q ``[b, h, t, k]``, k/v ``[b, h, s, k]``, 4-D mask/bias or None -> ``[b, h, t, k]``, in query blocks."""
    b, h, t, d = qh.shape
    s = kh.shape[2]
    scale = d**-0.5 if scale is None else scale
    extras = {name: a for name, a in (("mask", mask), ("bias", bias)) if a is not None}
    block = _query_block(b * h, t, s)
    if block >= t:
        return _attend(qh, kh, vh, mask, bias, scale)
    n = -(-t // block)

    def split(a, fill):  # [b, h, t, ...] -> [n, b, h, block, ...]; broadcast (size-1) axes are not split
        if a.shape[2] == 1:
            return None
        a = jnp.pad(a, [(0, 0), (0, 0), (0, n * block - t)] + [(0, 0)] * (a.ndim - 3), constant_values=fill)
        return jnp.moveaxis(a.reshape(a.shape[:2] + (n, block) + a.shape[3:]), 2, 0)

    blocks = {"q": split(qh, 0)}
    blocks.update({name: split(a, name == "mask") for name, a in extras.items()})
    blocks = {name: a for name, a in blocks.items() if a is not None}
    fixed = {name: a for name, a in extras.items() if name not in blocks}

    def one(xs):
        parts = {**fixed, **xs}
        return _attend(parts["q"], kh, vh, parts.get("mask"), parts.get("bias"), scale)  # [b, h, block, k]

    out = jax.lax.map(one, blocks)  # [n, b, h, block, k]
    return jnp.moveaxis(out, 0, 2).reshape(b, h, n * block, -1)[:, :, :t]  # [b, h, t, k]


def _as_4d(a, name, b, h, t, s):
    a = jnp.asarray(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected 3 or 4 dims broadcastable to [b, t, s] / [b, h, t, s], got {a.shape}")
    try:
        jnp.broadcast_shapes(a.shape, (b, h, t, s))
    except ValueError:
        raise ValueError(f"{name}: shape {a.shape} does not broadcast to [b, h, t, s] = {(b, h, t, s)}") from None
    return a


_BLOCK_BYTES = 16 * 2**20  # target size of one block of float32 logits (measured on a 2-core CPU)


def _query_block(bh: int, t: int, s: int) -> int:
    if bh * t * s * 4 <= 2 * _BLOCK_BYTES:
        return t
    return max(16, _BLOCK_BYTES // (bh * s * 4))


def _attend(q, k, v, mask, bias, scale):
    """Head-major attention: q ``[b, h, t, k]``, k/v ``[b, h, s, k]`` -> ``[b, h, t, k]``."""
    logits = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32) * scale  # [b, h, t, s]
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    probs = jnp.exp(logits)  # unnormalised; normalise the [t, k] output instead of the [t, s] weights
    out = jnp.einsum("bhts,bhsk->bhtk", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.sum(probs, axis=-1, keepdims=True)).astype(v.dtype)  # [b, h, t, k]


def cached_attention(
    q: Float[Array, "b c h k"],
    k: Float[Array, "b c h k"],
    v: Float[Array, "b c h k"],
    cache: KVCache,
    valid: Bool[Array, "b c"],
    *,
    chunk_size: int,
    num_left_chunks: int = -1,
    scale: float | None = None,
) -> tuple[Float[Array, "b c h k"], KVCache]:
    """One streaming attention step over the ring buffer with chunk-mask semantics.

    Writes ``k/v`` (invalid frames as empty), then lets the query at absolute position ``p`` see the slots
    whose positions pass :func:`fmjax.nn.masks.chunk_visibility` (its own chunk and ``L`` left chunks, or all
    held ones for ``L = -1``); a row with nothing visible sees every slot, as offline. Chunks must be fed
    with ``c = chunk_size`` frames per step (pad the last one) so that they stay aligned to chunk bounds.
    Queries at positions ``count + i`` get rotary or relative encodings from the caller beforehand.

    Only the filled prefix of the ring is read (:func:`filled_window`: one of a few static sizes, chosen by a
    ``lax.switch``).

    Returns:
      ``(out [b, c, h, k], new_cache)``.
    """
    c = q.shape[1]
    q_pos = chunk_positions(cache, c)  # [b, c]
    cache = kv_cache_write(cache, k, v, valid)
    index, sizes = filled_window(q_pos, cache.pos.shape[1])

    def attend(window, q, cache):
        keys, values, pos, _ = kv_rows(cache, window)  # [b, window, h, k], [b, window]
        mask = fill_empty_rows(chunk_visibility(q_pos, pos, chunk_size, num_left_chunks))  # [b, c, window]
        return dot_product_attention(q, keys, values, mask=mask, scale=scale)

    if len(sizes) == 1:
        return attend(sizes[0], q, cache), cache
    branches = [functools.partial(attend, window) for window in sizes]
    return jax.lax.switch(index, branches, q, cache), cache


class MultiHeadAttention(nn.Module):
    """diffusers ``Attention`` as Matcha/CosyVoice use it: ``to_q/to_k/to_v`` (bias-free by default), SDPA,
    ``to_out`` with bias.

    Attributes:
      heads: ``h``.
      head_dim: ``k``; the inner width is ``h·k``.
      qkv_bias: bias on ``to_q/to_k/to_v``.
    """

    heads: int
    head_dim: int
    qkv_bias: bool = False

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
        """Offline (``cache=None``): attention over ``x`` with ``mask`` and/or an additive logit ``bias``
        (see :func:`dot_product_attention`; e.g. Matcha's float frame mask, which diffusers adds to the logits).
        Streaming: ``x`` is one chunk, ``valid [b, t]`` its frame mask, and the mask comes from the cache
        positions with ``chunk_size``/``num_left_chunks`` (see :func:`cached_attention`); ``mask`` and ``bias``
        must be None.

        Returns:
          ``(y [b, t, d], new_cache)``; ``new_cache`` is None offline.
        """
        b, t, d = x.shape
        inner = self.heads * self.head_dim

        def proj(name):
            return nn.Dense(inner, use_bias=self.qkv_bias, name=name)(x).reshape(b, t, self.heads, self.head_dim)

        q, k, v = proj("to_q"), proj("to_k"), proj("to_v")  # [b, t, h, k]
        if cache is None:
            out = dot_product_attention(q, k, v, mask=mask, bias=bias)
        else:
            if mask is not None or bias is not None or valid is None or chunk_size <= 0:
                raise ValueError("streaming attention takes valid=[b, t] and chunk_size > 0, and no mask or bias")
            out, cache = cached_attention(
                q, k, v, cache, valid, chunk_size=chunk_size, num_left_chunks=num_left_chunks
            )
        return nn.Dense(d, name="to_out")(out.reshape(b, t, inner)), cache  # [b, t, d]

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dtype=jnp.float32) -> KVCache:
        """Empty ring buffer of ``window`` slots for this layer."""
        return init_kv_cache(batch, window, self.heads, self.head_dim, dtype)

