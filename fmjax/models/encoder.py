"""CosyVoice2's ``UpsampleConformerEncoder`` (speech tokens at 25 Hz -> hidden frames at 50 Hz), offline and as an
exact static-shape streaming step.

Pipeline (SPEC §2; torch names in brackets), on token embeddings ``x [b, t, d]``:

1. ``embed``: Linear -> LayerNorm(eps 1e-5) -> ×√d (the relative encoding adds nothing to ``x``).
2. ``pre_lookahead_layer``: ``conv1`` (kernel ``L+1``, no padding) over the sequence followed by ``L = 3``
   look-ahead frames (the embedded ``context`` tokens, zeros where absent), leaky ReLU 0.01, ``conv2``
   (kernel 3, causal), plus the input.
3. ``encoders_0..N-1``: :class:`fmjax.nn.conformer.ConformerLayer` with relative positions.
4. ``up_layer``: nearest ×stride repeat, causal conv (kernel ``2·stride+1``).
5. ``up_embed`` (as 1.), ``up_encoders_0..3``, ``after_norm`` (LayerNorm eps 1e-5).

Masks: key padding, plus in chunk mode the chunk mask of ``C = static_chunk_size`` tokens in the first stack and
``stride·C`` frames in the second, each query seeing its own chunk and ``num_left_chunks`` earlier ones (all for
``-1``; CosyVoice2 HEAD always uses all).

Streaming (``cache`` given) consumes ``C`` tokens per step plus their ``L`` look-ahead tokens and returns
``stride·C`` frames equal to the offline chunk-masked encoder on the whole stream (padded at the end by zeros,
as torch's ``finalize``). Every stream in a batch advances by ``C`` tokens per step; only a row's last chunk may
be shorter (pass its valid length, and no look-ahead for it). The cache holds one K/V ring buffer per layer
(slots with int32 absolute positions), the 2 previous ``conv1`` outputs and the last ``2·stride`` repeated
frames before ``up_layer``'s conv: its size is fixed by ``(batch, window)``.

Ragged offline batches behave as torch does: ``conv1`` of the last valid tokens of a shorter row reads the
embedded padding frames (not zeros). A streamed row equals the offline encoder run on that row alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.nn.attention import KVCache, init_kv_cache
from fmjax.nn.conformer import ConformerLayer
from fmjax.nn.conv import CausalConv1d, ConvCache
from fmjax.nn.masks import ChunkSpec, attention_mask
from fmjax.nn.tokens import (  # noqa: F401  (TokenEmbedding, PreLookahead, check_token_ids: also re-exported here)
    LEAKY_SLOPE,
    LOOKAHEAD_CONV2_KERNEL,
    PreLookahead,
    TokenEmbedding,
    check_token_ids,
    token_mask,
)
from fmjax.nn.transformer import layer_norm
from fmjax.streaming import check_cache_shapes, keep_idle_rows
from fmjax.typing import Array, Float, Int



@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Sizes of :class:`UpsampleConformerEncoder`. Defaults are CosyVoice2's (37.83 M params).

    Attributes:
      input_size: width of the token embeddings (must equal ``output_size``, as ``up_embed`` requires).
      output_size: model width ``d``.
      heads: attention heads.
      linear_units: feed-forward inner width.
      num_blocks: conformer layers before the upsampling.
      num_up_blocks: conformer layers after it (4, hard-coded in torch).
      pre_lookahead_len: look-ahead tokens ``L`` of the pre-lookahead conv.
      lookahead_channels: inner width of the pre-lookahead layer (512, hard-coded in torch).
      static_chunk_size: chunk ``C`` in tokens for chunk masks and streaming (25 in CosyVoice2).
      num_left_chunks: left chunks a chunk sees; ``-1`` = all.
      upsample_stride: frames per token (2).
      embed_eps: LayerNorm eps of ``embed``, ``up_embed``, ``after_norm``.
      layer_eps: LayerNorm eps inside conformer layers.
    """

    input_size: int = 512
    output_size: int = 512
    heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4
    pre_lookahead_len: int = 3
    lookahead_channels: int = 512
    static_chunk_size: int = 25
    num_left_chunks: int = -1
    upsample_stride: int = 2
    embed_eps: float = 1e-5
    layer_eps: float = 1e-12

    def __post_init__(self):
        for name in ("input_size", "output_size", "heads", "linear_units", "lookahead_channels",
                     "static_chunk_size", "upsample_stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EncoderConfig.{name}: expected a positive int, got {value!r}")
        for name in ("num_blocks", "num_up_blocks", "pre_lookahead_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"EncoderConfig.{name}: expected an int >= 0, got {value!r}")
        if not isinstance(self.num_left_chunks, int) or self.num_left_chunks < -1:
            raise ValueError(f"EncoderConfig.num_left_chunks: expected -1 (all) or >= 0, got {self.num_left_chunks!r}")
        if self.input_size != self.output_size:
            raise ValueError(
                f"EncoderConfig.input_size: must equal output_size ({self.output_size}) because up_embed is applied "
                f"to output_size features, got {self.input_size}"
            )
        if self.output_size % (2 * self.heads):
            raise ValueError(
                f"EncoderConfig.output_size: expected a multiple of 2·heads = {2 * self.heads}, got {self.output_size}"
            )


class EncoderCache(NamedTuple):
    """Streaming state of :class:`UpsampleConformerEncoder` (every leaf has the batch axis first).

    Attributes:
      lookahead: the last 2 ``conv1`` outputs (input history of ``conv2``), ``[b, 2, lookahead_channels]``.
      upsample: the last ``2·stride`` repeated frames (input history of ``up_layer.conv``), ``[b, 2·stride, d]``.
      encoders: one :class:`KVCache` of ``w`` token slots per first-stack layer.
      up_encoders: one :class:`KVCache` of ``stride·w`` frame slots per second-stack layer.
    """

    lookahead: ConvCache
    upsample: ConvCache
    encoders: tuple[KVCache, ...]
    up_encoders: tuple[KVCache, ...]


class LinearEmbed(nn.Module):
    """WeNet ``LinearNoSubsampling`` + ``EspnetRelPositionalEncoding``: ``LN(linear(x))·√d`` (params ``linear``,
    ``norm``)."""

    dim: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Float[Array, "b t e"]) -> Float[Array, "b t d"]:
        """``[b, t, e]`` -> ``[b, t, d]``."""
        h = layer_norm(self.eps, "norm")(nn.Dense(self.dim, name="linear")(x))  # [b, t, d]
        return h * math.sqrt(self.dim)


class Upsample(nn.Module):
    """Nearest ×stride repeat, then a causal conv of kernel ``2·stride+1`` (param ``conv``)."""

    stride: int

    @nn.compact
    def __call__(
        self, x: Float[Array, "b t d"], cache: ConvCache | None = None
    ) -> tuple[Float[Array, "b st d"], ConvCache | None]:
        """``[b, t, d]`` -> ``(y [b, stride·t, d], new_cache)``."""
        u = jnp.repeat(x, self.stride, axis=1)  # [b, stride·t, d]
        return CausalConv1d(x.shape[-1], 2 * self.stride + 1, name="conv")(u, cache)  # [b, stride·t, d]


class UpsampleConformerEncoder(nn.Module):
    """CosyVoice2's upsampling conformer encoder (see the module docstring).

    Params mirror torch: ``embed``, ``pre_lookahead_layer``, ``encoders_{i}``, ``up_layer``, ``up_embed``,
    ``up_encoders_{i}``, ``after_norm``.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t e"],
        mask=None,
        *,
        context: Float[Array, "b l e"] | None = None,
        context_lengths: Int[Array, "b"] | None = None,
        chunk: ChunkSpec | None = None,
        cache: EncoderCache | None = None,
        chunk_masked: bool | None = None,
    ):
        """Offline (``cache=None``) or one streaming step.

        Args:
          x: token embeddings ``[b, t, input_size]``; streaming, one chunk of ``t <= C`` tokens (shorter chunks
            are zero-padded to ``C``; pass ``C`` always and use ``mask`` to keep one compilation).
          mask: ``[b, t]`` 0/1 or ``[b]`` int lengths of valid tokens (prefixes); None = all valid.
          context: ``[b, l <= L, input_size]`` embeddings of the tokens that follow ``x`` (torch's ``context``;
            streaming: the next chunk's first ``L`` tokens). Missing frames are zeros after the embedding.
          context_lengths: ``[b]`` valid context frames per row (default: all ``l``). For the final flush pass
            0 (or ``context=None``): zeros given as context are embedded, not treated as absent. Streaming,
            rows whose chunk is shorter than ``C`` get no look-ahead.
          chunk: offline only: per-row chunk attention in **tokens** (a :class:`~fmjax.nn.masks.ChunkSpec`; the
            second stack uses it scaled by the stride); None = full context. CosyVoice2's chunk-masked mode (torch
            ``streaming=True``) is ``ChunkSpec.chunked(b, static_chunk_size, num_left_chunks)``. Streaming is always
            chunk-masked with the config's chunks.
          cache: an :class:`EncoderCache` from :meth:`init_cache` for a streaming step; a row whose chunk has no
            valid token is idle (its cache does not change).
          chunk_masked: deprecated (offline only): ``True`` = the config's chunks for every row.

        Returns:
          ``(h, new_cache)``: offline ``h [b, stride·t, d]`` and None; streaming ``h [b, stride·C, d]`` (the first
          ``stride·length`` frames of a row are valid) and the new cache. The frame mask is the token mask
          repeated ``stride`` times (:func:`fmjax.nn.tokens.frame_mask`).
        """
        cfg = self.config
        b, t = self._check_inputs(x, context, context_lengths, chunk_masked, cache)
        if chunk_masked:
            if chunk is not None:
                raise ValueError("chunk_masked: give either chunk or the deprecated chunk_masked=True, not both")
            chunk = ChunkSpec.chunked(b, cfg.static_chunk_size, cfg.num_left_chunks)
        if chunk is not None:
            if cache is not None:
                raise ValueError("chunk: a streaming step (cache given) uses the config's chunks; pass chunk=None")
            if not isinstance(chunk, ChunkSpec):
                raise TypeError(f"chunk: expected a fmjax.nn.masks.ChunkSpec or None, got {type(chunk).__name__}")
            chunk.check(b)
        valid = token_mask(mask, b, t)
        embed = LinearEmbed(cfg.output_size, cfg.embed_eps, name="embed")
        pre = PreLookahead(cfg.pre_lookahead_len, cfg.lookahead_channels, name="pre_lookahead_layer")
        encoders = [
            ConformerLayer(cfg.heads, cfg.linear_units, cfg.layer_eps, name=f"encoders_{i}")
            for i in range(cfg.num_blocks)
        ]
        up_layer = Upsample(cfg.upsample_stride, name="up_layer")
        up_embed = LinearEmbed(cfg.output_size, cfg.embed_eps, name="up_embed")
        up_encoders = [
            ConformerLayer(cfg.heads, cfg.linear_units, cfg.layer_eps, name=f"up_encoders_{i}")
            for i in range(cfg.num_up_blocks)
        ]
        after_norm = layer_norm(cfg.embed_eps, "after_norm")
        s, left = cfg.upsample_stride, cfg.num_left_chunks

        if cache is not None:  # one streaming step of C tokens
            c = cfg.static_chunk_size
            x = jnp.pad(x, ((0, 0), (0, c - t), (0, 0)))  # [b, c, e]
            valid = jnp.pad(valid, ((0, 0), (0, c - t)))  # [b, c]
            full = jnp.all(valid, axis=1)  # [b] rows with a whole chunk may have look-ahead
        else:
            c = t
            full = jnp.ones((b,), bool)
        h = embed(x) * (valid[..., None] if cache is not None else 1.0)  # [b, c, d]
        ahead = self._lookahead(embed, context, context_lengths, full, b, h.dtype)  # [b, L, d]
        h, lookahead_cache = pre(jnp.concatenate([h, ahead], axis=1), None if cache is None else cache.lookahead)

        valid2 = jnp.repeat(valid, s, axis=1)  # [b, s·c]
        if cache is None:
            mask1 = attention_mask(valid, chunk)  # [b, t, t] (or [b, 1, t] for full context)
            mask2 = attention_mask(valid2, None if chunk is None else chunk.scaled(s))  # [b, s·t, s·t]
            for layer in encoders:
                h, _ = layer(h, mask1)
            h, _ = up_layer(h)  # [b, s·t, d]
            h = up_embed(h)
            for layer in up_encoders:
                h, _ = layer(h, mask2)
            return after_norm(h), None

        kv1 = []
        for layer, kv in zip(encoders, cache.encoders):
            h, kv = layer(h, None, kv, valid=valid, chunk_size=c, num_left_chunks=left)
            kv1.append(kv)
        h, upsample_cache = up_layer(h, cache.upsample)  # [b, s·c, d]
        h = up_embed(h)
        kv2 = []
        for layer, kv in zip(up_encoders, cache.up_encoders):
            h, kv = layer(h, None, kv, valid=valid2, chunk_size=s * c, num_left_chunks=left)
            kv2.append(kv)
        new_cache = EncoderCache(lookahead_cache, upsample_cache, tuple(kv1), tuple(kv2))
        return after_norm(h), keep_idle_rows(jnp.any(valid, axis=1), new_cache, cache)  # idle rows keep their state

    @nn.nowrap
    def _lookahead(self, embed, context, context_lengths, full, b, dtype) -> Float[Array, "b l d"]:
        """Embedded look-ahead frames, zero beyond ``context_lengths`` (and for rows that are not ``full``)."""
        cfg = self.config
        n = cfg.pre_lookahead_len
        if context is None or context.shape[1] == 0:
            return jnp.zeros((b, n, cfg.output_size), dtype)
        l = context.shape[1]
        lengths = jnp.full((b,), l, jnp.int32) if context_lengths is None else jnp.asarray(context_lengths)
        keep = (jnp.arange(n)[None, :] < jnp.minimum(lengths, l)[:, None]) & full[:, None]  # [b, L]
        ahead = jnp.pad(embed(context), ((0, 0), (0, n - l), (0, 0)))  # [b, L, d]
        return ahead * keep[..., None].astype(ahead.dtype)

    @nn.nowrap
    def _check_inputs(self, x, context, context_lengths, chunk_masked, cache) -> tuple[int, int]:
        cfg = self.config
        if not hasattr(x, "shape") or len(x.shape) != 3 or x.shape[-1] != cfg.input_size:
            raise ValueError(
                f"x: expected token embeddings of shape [b, t, {cfg.input_size}], got {getattr(x, 'shape', type(x))}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x: expected a floating dtype, got {x.dtype}")
        b, t = x.shape[:2]
        if chunk_masked is not None and not isinstance(chunk_masked, bool):
            raise TypeError(f"chunk_masked: expected a Python bool (deprecated; pass chunk), got "
                            f"{type(chunk_masked).__name__}")
        if chunk_masked and cache is not None:
            raise ValueError("chunk_masked: a streaming step (cache given) is always chunk-masked; leave it unset")
        if context is not None:
            if (len(context.shape) != 3 or context.shape[0] != b or context.shape[1] > cfg.pre_lookahead_len
                    or context.shape[2] != cfg.input_size):
                raise ValueError(
                    f"context: expected shape [{b}, <= {cfg.pre_lookahead_len}, {cfg.input_size}], got {context.shape}"
                )
        if context_lengths is not None and jnp.shape(context_lengths) != (b,):
            raise ValueError(f"context_lengths: expected shape [{b}], got {jnp.shape(context_lengths)}")
        if cache is None:
            return b, t
        if t > cfg.static_chunk_size:
            raise ValueError(
                f"x: a streaming chunk holds at most static_chunk_size = {cfg.static_chunk_size} tokens, got {t}"
            )
        if not isinstance(cache, EncoderCache):
            raise TypeError(f"cache: expected an EncoderCache from init_cache, got {type(cache).__name__}")
        cache_b = cache.lookahead.history.shape[0]
        if cache_b != b:
            raise ValueError(f"cache: made for batch {cache_b}, but x has batch {b}")
        window = cache.encoders[0].pos.shape[1] if cache.encoders else cfg.static_chunk_size
        check_cache_shapes(cache, jax.eval_shape(lambda: self.init_cache(b, window)), f"batch {b}, window {window}")
        return b, t

    @nn.nowrap
    def init_cache(self, batch: int, window_tokens: int | None = None, dtype=jnp.float32) -> EncoderCache:
        """Empty streaming state (shape-only; builds no submodule).

        Args:
          batch: independent streams.
          window_tokens: K/V slots per first-stack layer, in tokens (``stride·window_tokens`` frames in the
            second stack); it includes the current chunk. At least ``C``; with ``num_left_chunks = L >= 0`` at
            least ``(L + 1)·C`` (the default), which makes every step exact. With ``L = -1`` it is required, and
            steps are exact while the stream (its last chunk counted as ``C``) is at most ``window_tokens``
            long; later chunks see a sliding window of the last ``window_tokens`` tokens.
        """
        cfg = self.config
        c, left = cfg.static_chunk_size, cfg.num_left_chunks
        if window_tokens is None:
            if left < 0:
                raise ValueError("window_tokens: required when num_left_chunks = -1 (all left chunks)")
            window_tokens = (left + 1) * c
        if not isinstance(window_tokens, (int, np.integer)) or window_tokens < c:
            raise ValueError(
                f"window_tokens: expected an int >= one chunk (static_chunk_size = {c}), got {window_tokens!r}"
            )
        if left >= 0 and window_tokens < (left + 1) * c:
            raise ValueError(
                f"window_tokens: num_left_chunks = {left} needs at least (L + 1)·C = {(left + 1) * c} slots, "
                f"got {window_tokens}"
            )
        d, s, k = cfg.output_size, cfg.upsample_stride, cfg.output_size // cfg.heads
        return EncoderCache(
            lookahead=ConvCache(jnp.zeros((batch, LOOKAHEAD_CONV2_KERNEL - 1, cfg.lookahead_channels), dtype)),
            upsample=ConvCache(jnp.zeros((batch, 2 * s, d), dtype)),
            encoders=tuple(
                init_kv_cache(batch, int(window_tokens), cfg.heads, k, dtype) for _ in range(cfg.num_blocks)
            ),
            up_encoders=tuple(
                init_kv_cache(batch, s * int(window_tokens), cfg.heads, k, dtype) for _ in range(cfg.num_up_blocks)
            ),
        )
