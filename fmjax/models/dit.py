"""CosyVoice3's DiT estimator (F5-TTS style), with an exact static-shape streaming step.

Layout (SPEC §8 of the CosyVoice2 reference and the CosyVoice3 fixture README; channels last):

================  =========================================================================================
``time_embed``    ``sinusoidal(1000·t, 256)`` → Linear → SiLU → Linear (width ``dim``)
``time_embed_r``  MeanFlow students only (``mean_flow=True``): the same on the interval length ``r − t``
                  (``cond.r``; None = ``r = t``), its last Linear zero-initialised, added to ``time_embed``'s output
pack              ``[x | prompt | mu | spks broadcast over t]`` → ``[b, t, 2·mel + mu + spk]`` (this order
                  differs from the CosyVoice2 U-Net's)
``input_proj``    Linear → ``dim``; then ``+ conv_pos(·)`` (:class:`~fmjax.nn.dit_blocks.ConvPositionEmbedding`)
``blocks_<i>``    ``depth`` × :class:`~fmjax.nn.dit_blocks.DiTBlock` (torch ``transformer_blocks.<i>``), one param
                  tree per block, the same layout offline and streaming
``norm_out``      ``Linear(SiLU(t_emb))`` → (scale, shift), the reverse of the blocks' order; ``LN·(1+scale)+shift``
``proj_out``      Linear → ``mel_dim``; no output masking (padded frames get a deterministic non-zero value)
================  =========================================================================================

Attention masks are built once at the top from data: key padding, plus the per-row chunks of ``cond.chunk``
(a :class:`~fmjax.nn.masks.ChunkSpec` in frames; None = full context). The original ignores ``num_left_chunks``
(always all left chunks, the default ``-1`` here); ``L >= 0`` is an fmjax extension. Attention outputs are
zeroed at padded frames (for ``L = -1`` this is the original's "last mask row" rule). Rotary positions reach only
the first head's channels, as in the originals. The streaming step (``cache`` given) runs one chunk of at most
``chunk_size`` frames per row (a shorter last chunk is padded and masked) at each row's own absolute positions
and returns the same frames as the offline forward with ``ChunkSpec.chunked(b, chunk_size, num_left_chunks)``,
padded frames included; a row whose chunk has no valid frame is idle and keeps its cache. The per-block caches
are threaded through the blocks (never scanned in and out), as in the causal U-Net.

Returns: ``(v, cache)`` (``cache`` None offline); with ``return_aux=True`` ``(v, cache, aux)``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.cond import MelCond, check_estimator_call, pad_chunk
from fmjax.nn.attention import KVCache, check_kv_rows
from fmjax.nn.dit_blocks import ConvPosCache, ConvPositionEmbedding, DiTBlock, modulated_norm
from fmjax.nn.embeddings import TimestepEmbedding, sinusoidal_embedding
from fmjax.nn.masks import attention_mask
from fmjax.streaming import cache_nbytes, check_cache_shapes, keep_idle_rows
from fmjax.typing import Array, Float

TIME_FREQ_DIM = 256  # hard-coded in the original, independent of dim


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Sizes of a :class:`DiT` (defaults: CosyVoice3, 331,142,224 parameters).

    Attributes:
      dim: model width (divisible by ``conv_pos_groups``).
      depth: number of DiT blocks.
      heads, dim_head: attention shape (inner width ``heads·dim_head`` may differ from ``dim``); rotary
        positions use ``dim_head`` channels (even).
      ff_mult: feed-forward expansion.
      mel_dim: width of ``x``, of the prompt condition and of the output.
      mu_dim, spk_dim: widths of ``mu`` and ``spks``; the packed input has ``2·mel + mu + spk`` channels.
      chunk_size: ``C`` frames of the streaming chunk mask (50 = 25 tokens × 2).
      num_left_chunks: ``L`` left chunks visible; ``-1`` = all (the original's only behaviour).
      conv_pos_kernel, conv_pos_groups: the causal conv position embedding (31 taps, 16 groups).
      mean_flow: a MeanFlow student (:mod:`fmjax.meanflow`): a second time embedding ``time_embed_r`` of ``r − t``
        (``cond.r``). False (default, every converted checkpoint) is the plain DiT, exactly.
    """

    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 80
    chunk_size: int = 50
    num_left_chunks: int = -1
    conv_pos_kernel: int = 31
    conv_pos_groups: int = 16
    mean_flow: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "mean_flow":
                if not isinstance(value, bool):
                    raise TypeError(f"mean_flow: expected a bool, got {value!r}")
                continue
            lowest = -1 if f.name == "num_left_chunks" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise ValueError(f"{f.name}: expected an int >= {lowest}, got {value!r}")
        if self.dim % self.conv_pos_groups:
            raise ValueError(f"dim: expected a multiple of conv_pos_groups={self.conv_pos_groups}, got {self.dim}")
        if self.dim_head % 2:
            raise ValueError(f"dim_head: expected an even width (rotary pairs), got {self.dim_head}")

    @property
    def in_channels(self) -> int:
        """Width of the packed input ``[x | prompt | mu | spks]``."""
        return 2 * self.mel_dim + self.mu_dim + self.spk_dim

    def min_window(self) -> int:
        """Smallest K/V window for an exact streaming step: ``(L + 1)·C``, or ``C`` when ``L = -1`` (then the step
        is exact while the stream is no longer than the window)."""
        return self.chunk_size * (1 if self.num_left_chunks < 0 else self.num_left_chunks + 1)


class DiTCache(NamedTuple):
    """Streaming state of the whole DiT (fixed shapes): the conv position embedding's histories
    (``[b, k-1, dim]`` each) and one K/V ring buffer per block (a tuple of ``depth``)."""

    conv_pos: ConvPosCache
    blocks: tuple[KVCache, ...]


class DiT(nn.Module):
    """CosyVoice3 DiT estimator. ``apply(params, x, cond, t)`` → ``(v, None)``;
    ``apply(params, x_chunk, cond_chunk, t, cache)`` → ``(v_chunk, new_cache)``.
    """

    config: DiTConfig = DiTConfig()

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t m"],
        cond: MelCond,
        t: Float[Array, "b"],
        cache: DiTCache | None = None,
        *,
        return_aux: bool = False,
        streaming: bool | None = None,
    ):
        """Velocity of the flow at time ``t``.

        Args:
          x: ``[b, t, m]`` noisy mel (a chunk of ``t <= chunk_size`` frames when streaming).
          cond: :class:`~fmjax.cond.MelCond` with ``mu [b, t, mu_dim]``, ``spks [b, spk_dim]``,
            ``prompt [b, t, mel_dim]`` (the original's ``cond``), ``mask [b, t]`` (for a chunk: its frames) and,
            offline, ``chunk``: per-row chunk attention in frames (None = full context).
          t: ``[b]`` (or scalar) flow time.
          cache: None for the offline forward; a :class:`DiTCache` from :meth:`init_cache` (or the previous
            step) for one streaming step.
          return_aux: also return ``aux`` = ``t_freq``, ``t_emb``, ``packed_input``, ``input_proj``, ``conv_pos``,
            ``input_embed``, ``attn_mask`` ``[b, t, t]`` (offline), per block ``block{i}.mod``, ``block{i}.attn_norm``,
            ``block{i}.{q,k,v,q_rope,k_rope}``, ``block{i}.attn``, ``block{i}.ff``, ``block{i}``, then
            ``norm_out.mod``, ``norm_out``.
          streaming: deprecated (offline only): ``True`` = ``cond.chunk`` of ``chunk_size`` frames and
            ``num_left_chunks`` for every row.

        Returns:
          ``(v [b, t, m], new_cache)`` (``new_cache`` None offline); with ``return_aux``, ``(v, new_cache, aux)``.
        """
        cfg = self.config
        t, cond = self._check(x, cond, t, cache, streaming)
        b, n = x.shape[:2]
        if cache is not None:  # a partial last chunk is padded to C frames, masked
            x, cond = pad_chunk(x, cond, cfg.chunk_size)
        valid = cond.mask > 0  # [b, t]
        t_freq = sinusoidal_embedding(t, TIME_FREQ_DIM).astype(x.dtype)  # [b, 256]
        t_emb = TimestepEmbedding(cfg.dim, name="time_embed")(t_freq)  # [b, dim]
        if cfg.mean_flow:  # the interval [t, r]: r = t (the instantaneous velocity) when cond.r is None
            r = t if cond.r is None else cond.r
            t_emb = t_emb + TimestepEmbedding(cfg.dim, zero_out=True, name="time_embed_r")(
                sinusoidal_embedding(r - t, TIME_FREQ_DIM).astype(x.dtype))  # [b, dim]
        spks = jnp.broadcast_to(cond.spks[:, None, :].astype(x.dtype), (b, x.shape[1], cfg.spk_dim))
        packed = jnp.concatenate(
            [x, cond.prompt.astype(x.dtype), cond.mu.astype(x.dtype), spks], axis=-1
        )  # [b, t, 2·mel + mu + spk]
        input_proj = nn.Dense(cfg.dim, name="input_proj")(packed)  # [b, t, dim]
        conv_pos, conv_cache = ConvPositionEmbedding(cfg.conv_pos_kernel, cfg.conv_pos_groups, name="conv_pos")(
            input_proj, None if cache is None else cache.conv_pos
        )
        h = input_proj + conv_pos

        attn_mask = attention_mask(valid, cond.chunk) if cache is None else None  # [b, t, t] or [b, 1, t]
        aux = {"t_freq": t_freq, "t_emb": t_emb, "packed_input": packed, "input_proj": input_proj,
               "conv_pos": conv_pos, "input_embed": h}
        block_caches = []
        for i in range(cfg.depth):
            block = DiTBlock(cfg.heads, cfg.dim_head, cfg.ff_mult, cfg.chunk_size, cfg.num_left_chunks,
                             name=f"blocks_{i}")
            out = block(h, t_emb, attn_mask, valid, None if cache is None else cache.blocks[i],
                        return_aux=return_aux)
            h, block_cache = out[0], out[1]
            block_caches.append(block_cache)
            if return_aux:
                aux.update({f"block{i}" if k == "out" else f"block{i}.{k}": a for k, a in out[2].items()})

        norm_mod = nn.Dense(2 * cfg.dim, name="norm_out")(nn.silu(t_emb))  # [b, 2·dim]
        scale, shift = jnp.split(norm_mod, 2, axis=-1)  # 2 x [b, dim]
        normed = modulated_norm(h, shift, scale)
        v = nn.Dense(cfg.mel_dim, name="proj_out")(normed)  # [b, t, m]

        new_cache = None
        if cache is not None:
            v = v[:, :n]
            new_cache = keep_idle_rows(jnp.any(valid, axis=1), DiTCache(conv_cache, tuple(block_caches)), cache)
        elif return_aux:
            aux["attn_mask"] = jnp.broadcast_to(attn_mask, (b, n, n))
        if not return_aux:
            return v, new_cache
        aux.update({"norm_out.mod": norm_mod, "norm_out": normed})
        return v, new_cache, aux

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dtype=jnp.float32) -> DiTCache:
        """Empty streaming state: zero conv histories and empty K/V ring buffers of ``window`` frames, every row at
        position 0.

        ``window`` must hold the visible context: at least ``(L + 1)·C`` frames for ``L`` left chunks, at least
        ``C`` for ``L = -1`` (exact while the stream is no longer than ``window``). Shape-only: it builds no
        submodules and its size never depends on how far the stream goes.
        """
        cfg = self.config
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
        if not isinstance(window, (int, np.integer)) or window < cfg.min_window():
            raise ValueError(
                f"window: expected at least {cfg.min_window()} frames for chunk_size={cfg.chunk_size} and "
                f"num_left_chunks={cfg.num_left_chunks}, got {window!r}"
            )
        conv = ConvPositionEmbedding(cfg.conv_pos_kernel, cfg.conv_pos_groups).init_cache(batch, cfg.dim, dtype)
        block = DiTBlock(cfg.heads, cfg.dim_head)
        return DiTCache(conv, tuple(block.init_cache(batch, window, dtype) for _ in range(cfg.depth)))

    @nn.nowrap
    def cache_nbytes(self, batch: int, window: int, dtype=jnp.float32) -> int:
        """Bytes of the streaming state from :meth:`init_cache` (computed from shapes; nothing is allocated)."""
        return cache_nbytes(jax.eval_shape(lambda: self.init_cache(batch, window, dtype)))

    def _check(self, x, cond, t, cache, streaming):
        cfg = self.config
        t, cond = check_estimator_call(
            x, cond, t, mel_dim=cfg.mel_dim, mu_dim=cfg.mu_dim, spk_dim=cfg.spk_dim, cond_dim=cfg.mel_dim,
            cache=cache, chunk_size=cfg.chunk_size, num_left_chunks=cfg.num_left_chunks, streaming=streaming,
            mean_flow=cfg.mean_flow,
        )
        if "blocks" in self.variables.get("params", {}):
            raise ValueError("params: the DiT blocks are stacked under 'blocks' (the layout of fmjax < 0.2); "
                             "convert them with fmjax.models.dit.unstack_block_params")
        b = x.shape[0]
        if cache is None:
            return t, cond
        if not isinstance(cache, DiTCache):
            raise TypeError(f"cache: expected a DiTCache from init_cache, got {type(cache).__name__}")
        pos = cache.blocks[0].pos if len(cache.blocks) else None
        if getattr(pos, "ndim", 2) != 2:
            raise ValueError(f"cache.blocks[0].pos: expected shape [b, w], got {getattr(pos, 'shape', pos)}")
        if pos is not None:
            check_kv_rows(cache.blocks[0], b)
        window = pos.shape[1] if pos is not None else cfg.min_window()
        if window < cfg.min_window():
            raise ValueError(f"cache: a window of {window} frames is smaller than min_window()={cfg.min_window()}")
        dtype = cache.conv_pos.conv1.history.dtype
        check_cache_shapes(cache, jax.eval_shape(lambda: self.init_cache(b, window, dtype)),
                           f"batch {b}, window {window}")
        return t, cond


def unstack_block_params(variables: dict) -> dict:
    """Variables of the fmjax < 0.2 layout (blocks stacked on a leading ``depth`` axis under ``blocks``) in the
    current one (``blocks_<i>``); the current layout passes through unchanged."""
    params = dict(variables["params"])
    if "blocks" not in params:
        return variables
    stacked = params.pop("blocks")
    depth = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    params.update({f"blocks_{i}": jax.tree_util.tree_map(lambda a, i=i: a[i], stacked) for i in range(depth)})
    return {**variables, "params": params}
