"""CosyVoice2's ``CausalConditionalDecoder``: a one-level causal 1-D U-Net with chunk-masked transformers,
with an exact static-shape streaming step.

Layout (SPEC §4 of the CosyVoice2 reference, channels last):

=============  ==========================================================================================
``time_mlp``   ``sinusoidal(t·1000, in_channels)`` → Linear → SiLU → Linear (width 4·channels)
``time_mlp_r`` MeanFlow students only (``mean_flow=True``): the same on the interval length ``r − t``
               (``cond.r``; None = ``r = t``), its last Linear zero-initialised, added to ``time_mlp``'s output
pack           ``[x | mu | spks broadcast over t | prompt]`` → ``[b, t, in_channels]``
``down``       causal resnet (in → channels) + ``n_blocks`` transformer blocks; kept as the skip
``down_conv``  causal conv k=3 on ``h·mask``
``mid_<i>``    ``num_mid_blocks`` × (causal resnet + ``n_blocks`` transformer blocks), one param tree per stage
               (torch ``mid_blocks.<i>``), the same layout offline and streaming
``up``         causal resnet on ``[h | skip]`` (current first) + ``n_blocks`` transformer blocks
``up_conv``    causal conv k=3 on ``h·mask``
``final``      :class:`~fmjax.nn.unet_blocks.CausalBlock1D`, then ``final_proj`` 1×1 on ``h·mask``, ``·mask``
=============  ==========================================================================================

Every transformer block uses the same mask, built once at the top from data: key padding, plus the per-row
chunks of ``cond.chunk`` (a :class:`~fmjax.nn.masks.ChunkSpec` in frames; None = full context). Chunk-masked,
full-context and mixed batches therefore share one compiled program. The streaming step (``cache`` given) runs
one chunk of at most ``chunk_size`` frames per row (a shorter one is padded and masked) at each row's own stream
position, and returns the same frames as the offline forward with ``ChunkSpec.chunked(b, chunk_size,
num_left_chunks)``; see :func:`fmjax.nn.attention.cached_attention` for the window needed. A row whose chunk has
no valid frame is idle: its cache does not change.

Returns (every streaming-capable module of fmjax): ``(v, cache)`` — ``cache`` None offline — and with
``return_aux=True`` ``(v, cache, aux)``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.cond import MelCond, check_estimator_call, pad_chunk
from fmjax.nn.attention import KVCache, check_kv_rows, init_kv_cache
from fmjax.nn.conv import CausalConv1d, Conv1d, ConvCache
from fmjax.nn.embeddings import TimestepEmbedding, sinusoidal_embedding
from fmjax.nn.masks import attention_mask
from fmjax.nn.transformer import FF_ACTIVATIONS, TransformerBlock
from fmjax.nn.unet_blocks import CausalBlock1D, ResnetBlock1D, ResnetCache
from fmjax.streaming import cache_nbytes, check_cache_shapes, keep_idle_rows
from fmjax.typing import Array, Float


@dataclasses.dataclass(frozen=True)
class CausalUNetConfig:
    """Sizes of a :class:`CausalConditionalDecoder` (defaults: CosyVoice2, 71.3 M parameters).

    Attributes:
      mel_dim: width of ``x`` and of the output (torch ``out_channels``).
      mu_dim, spk_dim, cond_dim: widths of ``mu``, ``spks`` and the prompt condition; the packed input has
        ``in_channels = mel_dim + mu_dim + spk_dim + cond_dim`` channels (320).
      channels: U-Net width (torch ``channels=[256]``; one level).
      n_blocks: transformer blocks per stage.
      num_mid_blocks: middle stages.
      num_heads, head_dim: attention shape.
      ff_mult: feed-forward expansion; activation: ``"gelu"`` (exact), ``"gelu_tanh"`` or ``"snakebeta"``.
      chunk_size: ``C`` frames of the streaming chunk mask (50 = 25 tokens × 2).
      num_left_chunks: ``L`` left chunks visible; ``-1`` = all (CosyVoice2 HEAD).
      mean_flow: a MeanFlow student (:mod:`fmjax.meanflow`): a second time embedding ``time_mlp_r`` of ``r − t``
        (``cond.r``) predicts the average velocity over ``[t, r]``. False (default, every converted checkpoint) is
        the plain flow, exactly: no extra parameters, and ``cond.r`` must be None.
    """

    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 80
    cond_dim: int = 80
    channels: int = 256
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    head_dim: int = 64
    ff_mult: int = 4
    activation: str = "gelu"
    chunk_size: int = 50
    num_left_chunks: int = -1
    mean_flow: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "mean_flow":
                if not isinstance(value, bool):
                    raise TypeError(f"mean_flow: expected a bool, got {value!r}")
            elif f.name == "activation":
                if value not in FF_ACTIVATIONS:
                    raise ValueError(f"activation: expected one of {FF_ACTIVATIONS}, got {value!r}")
            elif f.name == "num_left_chunks":
                if not isinstance(value, int) or value < -1:
                    raise ValueError(f"num_left_chunks: expected -1 (all) or >= 0, got {value!r}")
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name}: expected a positive int, got {value!r}")

    @property
    def in_channels(self) -> int:
        return self.mel_dim + self.mu_dim + self.spk_dim + self.cond_dim

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.channels

    def min_window(self) -> int:
        """Smallest K/V window for an exact streaming step: ``(L + 1)·C``, or ``C`` when ``L = -1`` (then the
        step is exact while the stream fits the window)."""
        return self.chunk_size * (1 if self.num_left_chunks < 0 else self.num_left_chunks + 1)


class StageCache(NamedTuple):
    """Streaming state of one stage: its resnet's conv histories and one ring buffer per transformer block."""

    resnet: ResnetCache
    attn: tuple[KVCache, ...]


class CausalUNetCache(NamedTuple):
    """Streaming state of the whole estimator (fixed shapes): one entry per stage, ``mid`` a tuple of them."""

    down: StageCache
    down_conv: ConvCache
    mid: tuple[StageCache, ...]
    up: StageCache
    up_conv: ConvCache
    final_block: ConvCache


class _Stage(nn.Module):
    """Causal resnet + ``n_blocks`` transformer blocks: ``(h, cache)``, with ``return_aux`` ``(h, cache, aux)``."""

    config: CausalUNetConfig

    @nn.compact
    def __call__(self, h, mask, t_emb, attn_mask, valid, cache=None, *, return_aux=False):
        cfg = self.config
        h, resnet_cache = ResnetBlock1D(cfg.channels, causal=True, name="resnet")(
            h, mask, t_emb, None if cache is None else cache.resnet
        )  # [b, t, channels]
        aux = {"resnet": h}
        attn_caches = []
        for j in range(cfg.n_blocks):
            block = TransformerBlock(cfg.num_heads, cfg.head_dim, cfg.ff_mult, cfg.activation, name=f"tf_{j}")
            h, c = block(
                h, attn_mask, None if cache is None else cache.attn[j],
                valid=valid, chunk_size=cfg.chunk_size, num_left_chunks=cfg.num_left_chunks,
            )
            attn_caches.append(c)
            aux[f"tf{j}"] = h
        new_cache = None if cache is None else StageCache(resnet_cache, tuple(attn_caches))
        return (h, new_cache, aux) if return_aux else (h, new_cache)


class CausalConditionalDecoder(nn.Module):
    """CosyVoice2 estimator. ``apply(params, x, cond, t)`` → ``(v, None)``;
    ``apply(params, x_chunk, cond_chunk, t, cache)`` → ``(v_chunk, new_cache)``.
    """

    config: CausalUNetConfig = CausalUNetConfig()

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t m"],
        cond: MelCond,
        t: Float[Array, "b"],
        cache: CausalUNetCache | None = None,
        *,
        return_aux: bool = False,
        streaming: bool | None = None,
    ):
        """Velocity of the flow at time ``t``.

        Args:
          x: ``[b, t, m]`` noisy mel (a chunk of ``t <= chunk_size`` frames when streaming).
          cond: :class:`~fmjax.cond.MelCond` with ``mu [b, t, mu_dim]``, ``spks [b, spk_dim]``,
            ``prompt [b, t, cond_dim]``, ``mask [b, t]`` (for a chunk: the chunk's frames) and, offline,
            ``chunk``: per-row chunk attention in frames (None = full context).
          t: ``[b]`` (or scalar) flow time.
          cache: None for the offline forward; a :class:`CausalUNetCache` from :meth:`init_cache` (or the
            previous step) for one streaming step.
          return_aux: also return the intermediates ``t_emb``, ``down.resnet``, ``down.tf<j>``, ``down_conv``,
            ``mid<i>.resnet``, ``mid<i>.tf<j>``, ``up.resnet``, ``up.tf<j>``, ``up_conv``, ``final_block``.
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
        mask = cond.mask.astype(x.dtype)  # [b, t]
        t_emb = TimestepEmbedding(cfg.time_embed_dim, name="time_mlp")(
            sinusoidal_embedding(t, cfg.in_channels).astype(x.dtype)
        )  # [b, 4·channels]
        if cfg.mean_flow:  # the interval [t, r]: r = t (the instantaneous velocity) when cond.r is None
            r = t if cond.r is None else cond.r
            t_emb = t_emb + TimestepEmbedding(cfg.time_embed_dim, zero_out=True, name="time_mlp_r")(
                sinusoidal_embedding(r - t, cfg.in_channels).astype(x.dtype)
            )  # [b, 4·channels]
        spks = jnp.broadcast_to(cond.spks[:, None, :].astype(x.dtype), (b, x.shape[1], cfg.spk_dim))
        h = jnp.concatenate([x, cond.mu.astype(x.dtype), spks, cond.prompt.astype(x.dtype)], axis=-1)  # [b, t, in]

        if cache is None:
            attn_mask, valid = attention_mask(mask, cond.chunk), None  # [b, t, t] or [b, 1, t]
        else:
            attn_mask, valid = None, mask > 0  # [b, C]
        c = cache if cache is not None else CausalUNetCache(None, None, (None,) * cfg.num_mid_blocks, None, None,
                                                            None)
        aux = {"t_emb": t_emb}

        def masked(a):
            return a * mask[..., None]

        def stage(name, h, stage_cache):
            out = _Stage(cfg, name=name)(h, mask, t_emb, attn_mask, valid, stage_cache, return_aux=return_aux)
            if return_aux:
                aux.update({f"{name.replace('_', '')}.{k}": a for k, a in out[2].items()})
            return out[0], out[1]

        h, down_cache = stage("down", h, c.down)
        skip = h
        h, down_conv_cache = CausalConv1d(cfg.channels, 3, name="down_conv")(masked(h), c.down_conv)
        aux["down_conv"] = h
        mid_caches = []
        for i in range(cfg.num_mid_blocks):
            h, mid_cache = stage(f"mid_{i}", h, c.mid[i])
            mid_caches.append(mid_cache)
        h = jnp.concatenate([h, skip], axis=-1)  # [b, t, 2·channels]
        h, up_cache = stage("up", h, c.up)
        h, up_conv_cache = CausalConv1d(cfg.channels, 3, name="up_conv")(masked(h), c.up_conv)
        aux["up_conv"] = h
        h, final_cache = CausalBlock1D(cfg.channels, name="final_block")(h, mask, c.final_block)
        aux["final_block"] = h
        v = masked(Conv1d(cfg.mel_dim, 1, name="final_proj")(masked(h)))  # [b, t, m]

        new_cache = None
        if cache is not None:
            v = v[:, :n]
            new_cache = CausalUNetCache(down_cache, down_conv_cache, tuple(mid_caches), up_cache, up_conv_cache,
                                        final_cache)
            new_cache = keep_idle_rows(jnp.any(valid, axis=1), new_cache, cache)  # idle rows keep their state
        return (v, new_cache, aux) if return_aux else (v, new_cache)

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dtype=jnp.float32) -> CausalUNetCache:
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
        d = cfg.channels

        def conv(width):
            return ConvCache(jnp.zeros((batch, 2, width), dtype))

        def stage(width_in):
            kv = tuple(init_kv_cache(batch, window, cfg.num_heads, cfg.head_dim, dtype) for _ in range(cfg.n_blocks))
            return StageCache(ResnetCache(conv(width_in), conv(d)), kv)

        mid = tuple(stage(d) for _ in range(cfg.num_mid_blocks))
        return CausalUNetCache(stage(cfg.in_channels), conv(d), mid, stage(2 * d), conv(d), conv(d))

    @nn.nowrap
    def cache_nbytes(self, batch: int, window: int, dtype=jnp.float32) -> int:
        """Bytes of the streaming state from :meth:`init_cache` (computed from shapes; nothing is allocated)."""
        return cache_nbytes(jax.eval_shape(lambda: self.init_cache(batch, window, dtype)))

    def _check(self, x, cond, t, cache, streaming):
        cfg = self.config
        t, cond = check_estimator_call(
            x, cond, t, mel_dim=cfg.mel_dim, mu_dim=cfg.mu_dim, spk_dim=cfg.spk_dim, cond_dim=cfg.cond_dim,
            cache=cache, chunk_size=cfg.chunk_size, num_left_chunks=cfg.num_left_chunks, streaming=streaming,
            mean_flow=cfg.mean_flow,
        )
        params = self.variables.get("params", {})
        if "mid" in params:
            raise ValueError("params: the decoder's mid stages are stacked under 'mid' (the layout of fmjax < 0.2); "
                             "convert them with fmjax.models.causal_unet.unstack_mid_params")
        b = x.shape[0]
        if cache is None:
            return t, cond
        if not isinstance(cache, CausalUNetCache):
            raise TypeError(f"cache: expected a CausalUNetCache from init_cache, got {type(cache).__name__}")
        if cache.down.attn:
            check_kv_rows(cache.down.attn[0], b)
        window = cache.down.attn[0].pos.shape[1] if cache.down.attn else cfg.min_window()
        dtype = cache.down.resnet.block1.history.dtype
        check_cache_shapes(cache, jax.eval_shape(lambda: self.init_cache(b, window, dtype)),
                           f"batch {b}, window {window}")
        return t, cond


def unstack_mid_params(variables: dict) -> dict:
    """Variables of the fmjax < 0.2 layout (mid stages stacked under ``mid``, or split as ``mid/"<i>"``) in the
    current one (``mid_<i>``, one tree per stage); the current layout passes through unchanged."""
    params = dict(variables["params"])
    if "mid" not in params:
        return variables
    mid = params.pop("mid")
    if "0" in mid:
        stages = [mid[str(i)] for i in range(len(mid))]
    else:
        n = jax.tree_util.tree_leaves(mid)[0].shape[0]
        stages = [jax.tree_util.tree_map(lambda a, i=i: a[i], mid) for i in range(n)]
    params.update({f"mid_{i}": stage for i, stage in enumerate(stages)})
    return {**variables, "params": params}


split_mid_params = unstack_mid_params
"""Deprecated alias: the streaming step and the offline forward now share the per-stage layout."""
