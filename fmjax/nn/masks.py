"""Frame and attention masks as pure functions of lengths, positions, chunk sizes and a key.

Semantics follow WeNet/CosyVoice (``cosyvoice/utils/mask.py``), with ``True`` = may attend / valid frame:

* chunk visibility: key ``j`` is visible from query ``i`` iff ``start(i) <= j < (i // C + 1)·C`` where
  ``start(i) = max(0, (i // C - L)·C)`` for ``L >= 0`` left chunks and ``0`` for ``L < 0`` (all left chunks);
* key padding: padded keys are never visible;
* a query row left with no visible key is made fully visible (the originals "force set to true" such rows;
  only padded queries can end up there, and their outputs are masked later).

Positions are absolute frame indices, so the same rule builds the offline ``[t, t]`` mask and the mask of a
streaming step over a K/V ring buffer (key positions ``-1`` = empty slot or padded frame).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmjax.typing import Array, Bool, Float, Int, Key


def padding_mask(lengths: Int[Array, "b"], max_len: int) -> Bool[Array, "b t"]:
    """``[b, max_len]`` bool, True at frames ``< lengths[b]`` (the inverse of WeNet's ``make_pad_mask``)."""
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths: expected shape [b], got {lengths.shape}")
    return jnp.arange(max_len)[None, :] < lengths[:, None]  # [b, t]


def chunk_visibility(
    q_pos: Int[Array, "*q"], k_pos: Int[Array, "*k"], chunk_size, num_left_chunks=-1
) -> Bool[Array, "..."]:
    """Chunk-attention visibility from absolute positions, broadcasting ``q_pos[..., :, None]`` against
    ``k_pos[..., None, :]``. Keys at negative positions (empty / padded) are never visible.

    Args:
      q_pos: ``[..., tq]`` int query positions.
      k_pos: ``[..., tk]`` int key positions (``-1`` = invalid).
      chunk_size: ``C`` (int or traced int; ``C >= t`` gives full context).
      num_left_chunks: ``L`` (int or traced int); ``L < 0`` = all left chunks.

    Returns:
      ``[..., tq, tk]`` bool.
    """
    q = jnp.asarray(q_pos)[..., :, None]
    k = jnp.asarray(k_pos)[..., None, :]
    chunk = q // chunk_size
    end = (chunk + 1) * chunk_size
    start = jnp.where(jnp.asarray(num_left_chunks) < 0, 0, jnp.maximum(0, (chunk - num_left_chunks) * chunk_size))
    return (k >= 0) & (k >= start) & (k < end)  # [..., tq, tk]


def fill_empty_rows(mask: Bool[Array, "... q k"]) -> Bool[Array, "... q k"]:
    """Makes every query row with no visible key fully visible (WeNet/CosyVoice's "force set to true")."""
    return mask | ~jnp.any(mask, axis=-1, keepdims=True)


def chunk_mask(t: int, chunk_size: int, num_left_chunks: int = -1) -> Bool[Array, "t t"]:
    """Static ``[t, t]`` chunk mask (``subsequent_chunk_mask`` with left chunks honoured)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size: expected a positive frame count, got {chunk_size}")
    pos = jnp.arange(t)
    return chunk_visibility(pos, pos, chunk_size, num_left_chunks)


def attention_mask(
    frame_mask: Bool[Array, "b t"] | Float[Array, "b t"], chunk_size: int = 0, num_left_chunks: int = -1
) -> Bool[Array, "b q t"]:
    """Self-attention mask of a padded batch: key padding, plus chunk visibility when ``chunk_size > 0``.

    Args:
      frame_mask: ``[b, t]`` 1/True at valid frames.
      chunk_size: ``C`` frames; ``0`` = full context (key padding only).
      num_left_chunks: ``L``; ``-1`` = all left chunks.

    Returns:
      ``[b, t, t]`` bool when chunked, else the broadcastable ``[b, 1, t]`` (no ``t x t`` array is built);
      rows with no visible key are filled as in :func:`fill_empty_rows`.
    """
    valid = jnp.asarray(frame_mask).astype(bool)
    if valid.ndim != 2:
        raise ValueError(f"frame_mask: expected shape [b, t], got {valid.shape}")
    if chunk_size < 0:
        raise ValueError(f"chunk_size: expected >= 0 (0 = full context), got {chunk_size}")
    if chunk_size == 0:
        return fill_empty_rows(valid[:, None, :])  # [b, 1, t]
    t = valid.shape[1]
    return fill_empty_rows(chunk_mask(t, chunk_size, num_left_chunks)[None] & valid[:, None, :])  # [b, t, t]


def draw_dynamic_chunk(
    key: Key,
    max_len: int,
    *,
    use_dynamic_left_chunk: bool = False,
    enable_full_context: bool = True,
    max_chunk: int = 25,
) -> tuple[Int[Array, ""], Int[Array, ""]]:
    """Draws one ``(chunk_size, num_left_chunks)`` for a training batch, as WeNet's ``add_optional_chunk_mask``
    with ``use_dynamic_chunk=True, decoding_chunk_size=0``:

    ``c ~ U{1, .., max_len-1}``; if ``c > max_len // 2`` and ``enable_full_context``: full context
    (``C = max_len``, ``L = -1``); otherwise ``C = c % max_chunk + 1`` and, with ``use_dynamic_left_chunk``,
    ``L ~ U{0, .., (max_len-1)//C - 1}`` (0 where that range is empty; else ``L = -1``). Sequences shorter than 2 frames get full context.

    Returns:
      int32 scalars ``(chunk_size, num_left_chunks)``, usable in :func:`chunk_visibility` under jit.
    """
    if max_len < 1:
        raise ValueError(f"max_len: expected >= 1, got {max_len}")
    key_c, key_l = jax.random.split(key)
    if max_len < 2:
        return jnp.int32(max_len), jnp.int32(-1)
    c = jax.random.randint(key_c, (), 1, max_len, dtype=jnp.int32)
    full = (c > max_len // 2) & enable_full_context
    chunk = jnp.where(full, jnp.int32(max_len), c % max_chunk + 1)
    if use_dynamic_left_chunk:
        max_left = jnp.maximum((max_len - 1) // chunk, 1)
        left = jax.random.randint(key_l, (), 0, max_left, dtype=jnp.int32)
        left = jnp.where(full, -1, left)
    else:
        left = jnp.int32(-1)
    return chunk, left


def dynamic_chunk_mask(
    key: Key,
    frame_mask: Bool[Array, "b t"] | Float[Array, "b t"],
    *,
    use_dynamic_left_chunk: bool = False,
    enable_full_context: bool = True,
    max_chunk: int = 25,
) -> Bool[Array, "b t t"]:
    """Training mask with a random chunk size / left context for the whole batch (see
    :func:`draw_dynamic_chunk`), combined with key padding and row filling: ``[b, t, t]`` bool."""
    valid = jnp.asarray(frame_mask).astype(bool)
    if valid.ndim != 2:
        raise ValueError(f"frame_mask: expected shape [b, t], got {valid.shape}")
    t = valid.shape[1]
    chunk, left = draw_dynamic_chunk(
        key, t, use_dynamic_left_chunk=use_dynamic_left_chunk, enable_full_context=enable_full_context,
        max_chunk=max_chunk,
    )
    pos = jnp.arange(t)
    return fill_empty_rows(chunk_visibility(pos, pos, chunk, left)[None] & valid[:, None, :])  # [b, t, t]
