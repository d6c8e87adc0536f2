"""Frame and attention masks as pure functions of lengths, positions, chunk sizes and a key.

Semantics follow WeNet/CosyVoice (``cosyvoice/utils/mask.py``), with ``True`` = may attend / valid frame:

* chunk visibility: key ``j`` is visible from query ``i`` iff ``start(i) <= j < (i // C + 1)·C`` where
  ``start(i) = max(0, (i // C - L)·C)`` for ``L >= 0`` left chunks and ``0`` for ``L < 0`` (all left chunks);
* key padding: padded keys are never visible;
* a query row left with no visible key is made fully visible (the originals "force set to true" such rows;
  only padded queries can end up there, and their outputs are masked later).

Positions are absolute frame indices, so the same rule builds the offline ``[t, t]`` mask and the mask of a
streaming step over a K/V ring buffer (key positions ``-1`` = empty slot or padded frame).

**Chunk attention is data.** A :class:`ChunkSpec` holds a chunk size and a left-context count *per row*
(int32 ``[b]``); full context is a chunk at least as long as the sequence (:data:`FULL_CONTEXT`). Models take it
with their conditions and build one mask at the top, so chunk-masked, full-context and mixed batches (CosyVoice2's
unified training, WeNet's dynamic chunk training) run through one compiled program.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.typing import Array, Bool, Float, Int, Key

FULL_CONTEXT = 1 << 24
"""A chunk size that means full context (any sequence is shorter; ``FULL_CONTEXT · 64`` still fits int32)."""


class ChunkSpec(NamedTuple):
    """Per-row chunk attention: query ``i`` of row ``b`` sees keys ``j`` with
    ``start(i) <= j < (i // size[b] + 1)·size[b]`` (see :func:`chunk_visibility`).

    Attributes:
      size: ``[b]`` int32 chunk size in frames (or tokens, at a token-rate layer); ``>= t`` (e.g.
        :data:`FULL_CONTEXT`) gives full context.
      left: ``[b]`` int32 left chunks visible; ``-1`` = all.
    """

    size: Int[Array, "b"]
    left: Int[Array, "b"]

    @staticmethod
    def full(batch: int) -> "ChunkSpec":
        """Full context for ``batch`` rows."""
        return ChunkSpec(jnp.full((batch,), FULL_CONTEXT, jnp.int32), jnp.full((batch,), -1, jnp.int32))

    @staticmethod
    def chunked(batch: int, size, left=-1) -> "ChunkSpec":
        """Every row chunk-masked with ``size`` (scalar or ``[b]``) and ``left`` left chunks."""
        size = _check_size(size)
        return ChunkSpec(jnp.broadcast_to(jnp.asarray(size, jnp.int32), (batch,)),
                         jnp.broadcast_to(jnp.asarray(left, jnp.int32), (batch,)))

    @staticmethod
    def rows(chunked: Bool[Array, "b"], size, left=-1) -> "ChunkSpec":
        """Rows with ``chunked`` True get chunks of ``size`` (``left`` left chunks), the others full context."""
        chunked = jnp.asarray(chunked, bool)
        if chunked.ndim != 1:
            raise ValueError(f"chunked: expected a [b] bool array, got shape {chunked.shape}")
        size = _check_size(size)
        return ChunkSpec(jnp.where(chunked, jnp.asarray(size, jnp.int32), FULL_CONTEXT).astype(jnp.int32),
                         jnp.where(chunked, jnp.asarray(left, jnp.int32), -1).astype(jnp.int32))

    def scaled(self, factor: int) -> "ChunkSpec":
        """The same chunks at ``factor`` times the rate (tokens -> frames); full context stays full."""
        size = jnp.asarray(self.size, jnp.int32)
        return ChunkSpec(jnp.where(size >= FULL_CONTEXT, FULL_CONTEXT, size * factor).astype(jnp.int32),
                         jnp.asarray(self.left, jnp.int32))

    def check(self, batch: int, name: str = "chunk") -> "ChunkSpec":
        """Raises unless ``size``/``left`` are ``[batch]`` integer arrays (sizes >= 1 and left >= -1 when concrete)."""
        for field in ("size", "left"):
            a = getattr(self, field)
            if tuple(jnp.shape(a)) != (batch,) or not jnp.issubdtype(jnp.result_type(a), jnp.integer):
                raise ValueError(f"{name}.{field}: expected [{batch}] integers, got shape {jnp.shape(a)} "
                                 f"dtype {jnp.result_type(a)}")
        if not isinstance(self.size, jax.core.Tracer) and np.min(np.asarray(self.size), initial=1) < 1:
            raise ValueError(f"{name}.size: expected chunk sizes >= 1, got {np.asarray(self.size).tolist()}")
        if not isinstance(self.left, jax.core.Tracer) and np.min(np.asarray(self.left), initial=-1) < -1:
            raise ValueError(f"{name}.left: expected -1 (all) or >= 0, got {np.asarray(self.left).tolist()}")
        return self


def _check_size(size):
    if not isinstance(size, jax.core.Tracer) and np.min(np.asarray(size), initial=1) < 1:
        raise ValueError(f"size: expected chunk sizes >= 1, got {np.asarray(size).tolist()}")
    return size


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
    frame_mask: Bool[Array, "b t"] | Float[Array, "b t"],
    chunk: ChunkSpec | int | None = None,
    num_left_chunks: int = -1,
) -> Bool[Array, "b q t"]:
    """Self-attention mask of a padded batch: key padding, plus chunk visibility.

    Args:
      frame_mask: ``[b, t]`` 1/True at valid frames.
      chunk: a :class:`ChunkSpec` (per-row chunks, the general form); or None / ``0`` for full context; or a static
        int ``C`` with ``num_left_chunks`` for every row.
      num_left_chunks: ``L`` for an int ``chunk``; ``-1`` = all left chunks.

    Returns:
      ``[b, t, t]`` bool with chunks, else the broadcastable ``[b, 1, t]`` (no ``t x t`` array is built);
      rows with no visible key are filled as in :func:`fill_empty_rows`.
    """
    valid = jnp.asarray(frame_mask).astype(bool)
    if valid.ndim != 2:
        raise ValueError(f"frame_mask: expected shape [b, t], got {valid.shape}")
    b, t = valid.shape
    if chunk is None or (isinstance(chunk, (int, np.integer)) and chunk == 0):
        return fill_empty_rows(valid[:, None, :])  # [b, 1, t]
    if isinstance(chunk, (int, np.integer)):
        if chunk < 0:
            raise ValueError(f"chunk: expected >= 0 (0 = full context), got {chunk}")
        return fill_empty_rows(chunk_mask(t, int(chunk), num_left_chunks)[None] & valid[:, None, :])  # [b, t, t]
    if not isinstance(chunk, ChunkSpec):
        raise TypeError(f"chunk: expected a ChunkSpec, an int or None, got {type(chunk).__name__}")
    chunk.check(b)
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]  # [1, t]
    size = jnp.asarray(chunk.size, jnp.int32)[:, None, None]  # [b, 1, 1]
    left = jnp.asarray(chunk.left, jnp.int32)[:, None, None]
    return fill_empty_rows(chunk_visibility(pos, pos, size, left) & valid[:, None, :])  # [b, t, t]


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


def dynamic_chunk_spec(
    key: Key,
    batch: int,
    max_len: int,
    *,
    per_row: bool = True,
    use_dynamic_left_chunk: bool = False,
    enable_full_context: bool = True,
    max_chunk: int = 25,
) -> ChunkSpec:
    """WeNet's dynamic chunk training as data: a :func:`draw_dynamic_chunk` draw for every row (``per_row``) or one
    for the whole batch, as a :class:`ChunkSpec` of ``batch`` rows (full-context draws get :data:`FULL_CONTEXT`)."""
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch: expected an int >= 1, got {batch!r}")

    def one(k):
        chunk, left = draw_dynamic_chunk(k, max_len, use_dynamic_left_chunk=use_dynamic_left_chunk,
                                         enable_full_context=enable_full_context, max_chunk=max_chunk)
        return jnp.where(chunk >= max_len, FULL_CONTEXT, chunk).astype(jnp.int32), left.astype(jnp.int32)

    if per_row:
        size, left = jax.vmap(one)(jax.random.split(key, batch))
    else:
        size, left = (jnp.broadcast_to(a, (batch,)) for a in one(key))
    return ChunkSpec(size, left)


def dynamic_chunk_mask(
    key: Key,
    frame_mask: Bool[Array, "b t"] | Float[Array, "b t"],
    *,
    use_dynamic_left_chunk: bool = False,
    enable_full_context: bool = True,
    max_chunk: int = 25,
) -> Bool[Array, "b t t"]:
    """Training mask with one random chunk size / left context for the whole batch (see
    :func:`draw_dynamic_chunk`), combined with key padding and row filling: ``[b, t, t]`` bool."""
    valid = jnp.asarray(frame_mask).astype(bool)
    if valid.ndim != 2:
        raise ValueError(f"frame_mask: expected shape [b, t], got {valid.shape}")
    b, t = valid.shape
    chunk, left = draw_dynamic_chunk(
        key, t, use_dynamic_left_chunk=use_dynamic_left_chunk, enable_full_context=enable_full_context,
        max_chunk=max_chunk,
    )
    return attention_mask(valid, ChunkSpec(jnp.broadcast_to(chunk, (b,)), jnp.broadcast_to(left, (b,))))
