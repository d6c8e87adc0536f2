"""CosyVoice2's ``CausalConditionalDecoder``: a one-level causal 1-D U-Net with chunk-masked transformers,
with an exact static-shape streaming step.

Layout (SPEC §4 of the CosyVoice2 reference, channels last):

=============  ==========================================================================================
``time_mlp``   ``sinusoidal(t·1000, in_channels)`` → Linear → SiLU → Linear (width 4·channels)
pack           ``[x | mu | spks broadcast over t | prompt]`` → ``[b, t, in_channels]``
``down``       causal resnet (in → channels) + ``n_blocks`` transformer blocks; kept as the skip
``down_conv``  causal conv k=3 on ``h·mask``
``mid``        ``num_mid_blocks`` × (causal resnet + ``n_blocks`` transformer blocks) with stacked params: one
               ``lax.scan`` offline; unrolled in the streaming step (per-stage ring buffers, updated in place)
``up``         causal resnet on ``[h | skip]`` (current first) + ``n_blocks`` transformer blocks
``up_conv``    causal conv k=3 on ``h·mask``
``final``      :class:`~fmjax.nn.unet_blocks.CausalBlock1D`, then ``final_proj`` 1×1 on ``h·mask``, ``·mask``
=============  ==========================================================================================

Every transformer block uses the same mask: key padding (offline, ``streaming=False``) or key padding and
the chunk mask of ``chunk_size`` frames with ``num_left_chunks`` (``streaming=True``). The streaming step
(``cache`` given) runs one chunk of at most ``chunk_size`` frames (a shorter one is padded and masked) and
returns the same frames as the offline chunk-masked forward; see :func:`fmjax.nn.attention.cached_attention`
for the window needed.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax.cond import MelCond, check_estimator_call, pad_chunk
from fmjax.nn.attention import KVCache, init_kv_cache
from fmjax.nn.conv import CausalConv1d, Conv1d, ConvCache
from fmjax.nn.embeddings import TimestepEmbedding, sinusoidal_embedding
from fmjax.nn.masks import attention_mask
from fmjax.nn.transformer import FF_ACTIVATIONS, TransformerBlock
from fmjax.nn.unet_blocks import CausalBlock1D, ResnetBlock1D, ResnetCache
from fmjax.streaming import cache_nbytes
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

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "activation":
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
    """Causal resnet + ``n_blocks`` transformer blocks; returns ``(h, (cache, aux))`` (a scan body)."""

    config: CausalUNetConfig

    @nn.compact
    def __call__(self, h, mask, t_emb, attn_mask, valid, cache):
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
        return h, (new_cache, aux)


class CausalConditionalDecoder(nn.Module):
    """CosyVoice2 estimator. ``apply(params, x, cond, t)`` → ``(v, aux)``;
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
        streaming: bool = False,
    ):
        """Velocity of the flow at time ``t``.

        Args:
          x: ``[b, t, m]`` noisy mel (a chunk of ``t <= chunk_size`` frames when streaming).
          cond: :class:`~fmjax.cond.MelCond` with ``mu [b, t, mu_dim]``, ``spks [b, spk_dim]``,
            ``prompt [b, t, cond_dim]``, ``mask [b, t]`` (for a chunk: the chunk's frames).
          t: ``[b]`` (or scalar) flow time.
          cache: None for the offline forward; a :class:`CausalUNetCache` from :meth:`init_cache` (or the
            previous step) for one streaming step.
          streaming: offline only, static: chunk-masked attention (True) or full context (False).

        Returns:
          Offline: ``(v [b, t, m], aux)`` with ``aux`` the intermediates ``t_emb``, ``down.resnet``,
          ``down.tf<j>``, ``down_conv``, ``mid<i>.resnet``, ``mid<i>.tf<j>``, ``up.resnet``, ``up.tf<j>``,
          ``up_conv``, ``final_block``. Streaming: ``(v_chunk [b, t, m], new_cache)``.
        """
        cfg = self.config
        t = self._check(x, cond, t, cache, streaming)
        b, n = x.shape[:2]
        if cache is not None:  # a partial last chunk is padded to C frames, masked
            x, cond = pad_chunk(x, cond, cfg.chunk_size)
        mask = cond.mask.astype(x.dtype)  # [b, t]
        t_emb = TimestepEmbedding(cfg.time_embed_dim, name="time_mlp")(
            sinusoidal_embedding(t, cfg.in_channels).astype(x.dtype)
        )  # [b, 4·channels]
        spks = jnp.broadcast_to(cond.spks[:, None, :].astype(x.dtype), (b, x.shape[1], cfg.spk_dim))
        h = jnp.concatenate([x, cond.mu.astype(x.dtype), spks, cond.prompt.astype(x.dtype)], axis=-1)  # [b, t, in]

        if cache is None:
            attn_mask = attention_mask(mask, cfg.chunk_size if streaming else 0, cfg.num_left_chunks)
            valid = None
        else:
            attn_mask, valid = None, mask > 0  # [b, C]
        c = cache if cache is not None else CausalUNetCache(*(None,) * 6)

        def masked(a):
            return a * mask[..., None]

        h, (down_cache, down_aux) = _Stage(cfg, name="down")(h, mask, t_emb, attn_mask, valid, c.down)
        skip = h
        h, down_conv_cache = CausalConv1d(cfg.channels, 3, name="down_conv")(masked(h), c.down_conv)
        down_conv = h
        if cache is None:  # one scan over the stacked params of the identical mid stages
            mid = nn.scan(
                _Stage,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=cfg.num_mid_blocks,
            )(cfg, name="mid")
            h, (mid_cache, mid_aux) = mid(h, mask, t_emb, attn_mask, valid, None)
        else:
            h, mid_cache = self._mid_step(h, mask, t_emb, valid, c.mid)
        h = jnp.concatenate([h, skip], axis=-1)  # [b, t, 2·channels]
        h, (up_cache, up_aux) = _Stage(cfg, name="up")(h, mask, t_emb, attn_mask, valid, c.up)
        h, up_conv_cache = CausalConv1d(cfg.channels, 3, name="up_conv")(masked(h), c.up_conv)
        up_conv = h
        h, final_cache = CausalBlock1D(cfg.channels, name="final_block")(h, mask, c.final_block)
        v = masked(Conv1d(cfg.mel_dim, 1, name="final_proj")(masked(h)))  # [b, t, m]

        if cache is not None:
            new_cache = CausalUNetCache(down_cache, down_conv_cache, mid_cache, up_cache, up_conv_cache, final_cache)
            return v[:, :n], new_cache
        aux = {"t_emb": t_emb, "down_conv": down_conv, "up_conv": up_conv, "final_block": h}
        aux.update({f"down.{k}": a for k, a in down_aux.items()})
        aux.update({f"up.{k}": a for k, a in up_aux.items()})
        for i in range(cfg.num_mid_blocks):
            aux.update({f"mid{i}.{k}": a[i] for k, a in mid_aux.items()})
        return v, aux

    def _mid_step(self, h, mask, t_emb, valid, caches):
        """Streaming step through the mid stages, unrolled: each stage keeps its own ring buffers, updated in
        place, where a scan would copy every buffer in and out. Params: the stacked ``mid`` (sliced here) or,
        cheaper per step, the per-stage ``mid`` of :func:`split_mid_params`."""
        mid = self.variables["params"]["mid"]
        stage = _Stage(self.config, parent=None)
        new_caches = []
        for i, stage_cache in enumerate(caches):
            params_i = mid[str(i)] if str(i) in mid else jax.tree_util.tree_map(lambda a, i=i: a[i], mid)
            h, (stage_cache, _) = stage.apply({"params": params_i}, h, mask, t_emb, None, valid, stage_cache)
            new_caches.append(stage_cache)
        return h, tuple(new_caches)

    @nn.nowrap
    def init_cache(self, batch: int, window: int, dtype=jnp.float32) -> CausalUNetCache:
        """Empty streaming state: zero conv histories and empty K/V ring buffers of ``window`` frames.

        ``window`` must hold the visible context: at least ``(L + 1)·C`` frames for ``L`` left chunks, at least
        ``C`` for ``L = -1`` (exact while the stream is no longer than ``window``). Shape-only: it builds no
        submodules and its size never depends on how far the stream goes.
        """
        cfg = self.config
        if batch < 1:
            raise ValueError(f"batch: expected >= 1, got {batch}")
        if window < cfg.min_window():
            raise ValueError(
                f"window: expected at least {cfg.min_window()} frames for chunk_size={cfg.chunk_size} and "
                f"num_left_chunks={cfg.num_left_chunks}, got {window}"
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

    def _check(self, x, cond, t, cache, streaming) -> Array:
        cfg = self.config
        t = check_estimator_call(x, cond, t, mel_dim=cfg.mel_dim, mu_dim=cfg.mu_dim, spk_dim=cfg.spk_dim,
                                 cond_dim=cfg.cond_dim, streaming=streaming, cache=cache, chunk_size=cfg.chunk_size)
        b = x.shape[0]
        if cache is None:
            if "0" in self.variables.get("params", {}).get("mid", {}):
                raise ValueError("params: the offline forward needs the stacked mid params, not split_mid_params'")
            return t
        if not isinstance(cache, CausalUNetCache):
            raise TypeError(f"cache: expected a CausalUNetCache from init_cache, got {type(cache).__name__}")
        keys = cache.down.attn[0].keys
        if keys.shape[0] != b:
            raise ValueError(f"cache: built for batch {keys.shape[0]}, but x has batch {b}")
        if (
            keys.shape[2:] != (cfg.num_heads, cfg.head_dim)
            or len(cache.down.attn) != cfg.n_blocks
            or len(cache.mid) != cfg.num_mid_blocks
        ):
            raise ValueError(f"cache: K/V shape {keys.shape} does not match the config {cfg}")
        return t


def split_mid_params(variables: dict) -> dict:
    """Variables whose stacked ``mid`` params are split into per-stage trees ``mid/"0"``, ``mid/"1"``, ...

    For the streaming step only (the offline forward scans the stacked form): it then reads each stage's
    weights in place instead of slicing ~240 MB out of the stack at every chunk (full-size model).
    """
    params = dict(variables["params"])
    mid = params["mid"]
    if "0" in mid:
        return variables
    n = jax.tree_util.tree_leaves(mid)[0].shape[0]
    params["mid"] = {str(i): jax.tree_util.tree_map(lambda a, i=i: a[i], mid) for i in range(n)}
    return {**variables, "params": params}
