"""Matcha-TTS / CosyVoice1 ``ConditionalDecoder``: the non-causal 1-D U-Net estimator, channels last.

Layout (``L = len(channels)`` levels; every stage is a :class:`~fmjax.nn.unet_blocks.ResnetBlock1D` followed by
``n_blocks`` :class:`~fmjax.nn.transformer.TransformerBlock` s; ``m_i`` is the frame mask at level ``i``,
``m_0 = mask`` and ``m_{i+1} = m_i[:, ::2]``):

=================  ===========================================================================================
``time_mlp``       ``sinusoidal(1000·t, in_channels)`` → Linear → SiLU → Linear (width ``4·channels[0]``)
pack               ``[x | mu | spks broadcast over t | prompt]`` → ``[b, t, in_channels]`` (spks / prompt may
                   have zero width: Matcha has no prompt, and no speaker input for a single speaker)
``down_i``         stage (→ ``channels[i]``) at mask ``m_i``; its output is kept as skip ``i``
``downsample_i``   on ``h·m_i``: conv k=3 stride 2 (``t → ceil(t/2)``), a plain conv k=3 at the last level
``mid``            ``num_mid_blocks`` stages at ``channels[-1]`` and mask ``m_{L-1}``, one ``lax.scan``
``up_i``           stage on ``[h | skip_{L-1-i}]`` (current first) at mask ``m_{L-1-i}``
``upsample_i``     on ``h·m``: ConvTranspose k=4 stride 2 (``t → 2t``), a plain conv k=3 at the last level
``final_block``    :class:`~fmjax.nn.unet_blocks.Block1D` at ``mask``; ``final_proj`` 1×1 on ``h·mask``, ``·mask``
=================  ===========================================================================================

Differences between the originals, and the config fields that select them:

* ``attention_mask`` — what the transformer blocks do with the frame mask (all three agree when nothing is
  padded, e.g. batch-1 inference or a CFG pair of equal lengths):

  - ``"additive_keys"`` (Matcha-TTS): the float ``[b, t]`` mask reaches diffusers' ``Attention`` as is, and
    SDPA *adds* it to the logits: valid keys get +1, padded keys stay visible (weight ``e⁻¹`` relative).
  - ``"additive_pairs"`` (CosyVoice1 as released, July 2024, the code CosyVoice-300M was trained with): the
    float outer product ``mask·maskᵀ`` is added, +1 on valid (query, key) pairs.
  - ``"key_padding"`` (CosyVoice at HEAD): padded keys get a ``-1e10`` bias, i.e. they are masked out.

* ``crop_upsampled`` — Matcha needs ``t`` divisible by ``2^(L-1)`` (its ``fix_len_compatibility`` pads the
  mel); here such a ``t`` is required and anything else raises. CosyVoice crops the upsampled sequence to
  its skip's length, which accepts any ``t`` (and is the identity for divisible ones): ``crop_upsampled=True``.

* Packing: CosyVoice1 appends the prompt mel (``cond``) after spks; Matcha ignores its ``cond`` argument.
  Speaker inputs are projected by the caller (both originals project them outside the estimator).

Not ported: CosyVoice's ``causal=True`` / chunk-masked variant is :mod:`fmjax.models.causal_unet`; Matcha's
conformer block types; dropout (this module is the deterministic inference/velocity function).

Padded frames: every convolution sees ``h·mask``, so the *values* of ``x``/``mu``/``prompt`` at padded frames
never reach the output, and the output is zero there. The *number* of padded frames does matter, as in the
originals: GroupNorm statistics span the whole padded length (and the additive masks leave padded keys
visible), so an example's output depends on how far it is padded, though never on the other examples.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax.cond import MelCond
from fmjax.nn.conv import Conv1d
from fmjax.nn.embeddings import TimestepEmbedding, sinusoidal_embedding
from fmjax.nn.masks import attention_mask
from fmjax.nn.transformer import FF_ACTIVATIONS, TransformerBlock
from fmjax.nn.unet_blocks import Block1D, Downsample1D, ResnetBlock1D, Upsample1D
from fmjax.typing import Array, Float

ATTENTION_MASKS = ("additive_keys", "additive_pairs", "key_padding")
GROUPS = 8  # GroupNorm groups of every Block1D in both originals


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Sizes and variant of a :class:`ConditionalDecoder` (defaults: Matcha-TTS on LJSpeech).

    Attributes:
      mel_dim: width of ``x`` and of the output (torch ``out_channels``).
      mu_dim, spk_dim, cond_dim: widths of ``mu``, ``spks`` and the prompt condition (0 = absent); the packed
        input has ``in_channels = mel_dim + mu_dim + spk_dim + cond_dim`` channels, which must be even.
      channels: U-Net widths, one per level (each a multiple of 8 for GroupNorm); a list is stored as a tuple.
      n_blocks: transformer blocks per stage.
      num_mid_blocks: middle stages (0 allowed).
      num_heads, head_dim: attention shape (torch ``num_heads``, ``attention_head_dim``).
      ff_mult: feed-forward expansion; activation: ``"snakebeta"``, ``"gelu"`` or ``"gelu_tanh"``.
      attention_mask: one of :data:`ATTENTION_MASKS` (see the module docstring).
      crop_upsampled: crop each upsampled sequence to its skip (CosyVoice) instead of requiring ``t`` to be
        divisible by ``2^(len(channels)-1)`` (Matcha).
    """

    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 0
    cond_dim: int = 0
    channels: tuple[int, ...] = (256, 256)
    n_blocks: int = 1
    num_mid_blocks: int = 2
    num_heads: int = 2
    head_dim: int = 64
    ff_mult: int = 4
    activation: str = "snakebeta"
    attention_mask: str = "additive_keys"
    crop_upsampled: bool = False

    def __post_init__(self):
        channels = self.channels
        if isinstance(channels, list):
            channels = tuple(channels)
            object.__setattr__(self, "channels", channels)
        if not isinstance(channels, tuple) or not channels or not all(
            isinstance(c, int) and c > 0 and c % GROUPS == 0 for c in channels
        ):
            raise ValueError(
                f"channels: expected a non-empty tuple of positive multiples of {GROUPS}, got {channels!r}"
            )
        positive = ("mel_dim", "mu_dim", "n_blocks", "num_heads", "head_dim", "ff_mult")
        for name in positive + ("spk_dim", "cond_dim", "num_mid_blocks"):
            value = getattr(self, name)
            low = 1 if name in positive else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if self.activation not in FF_ACTIVATIONS:
            raise ValueError(f"activation: expected one of {FF_ACTIVATIONS}, got {self.activation!r}")
        if self.attention_mask not in ATTENTION_MASKS:
            raise ValueError(f"attention_mask: expected one of {ATTENTION_MASKS}, got {self.attention_mask!r}")
        if not isinstance(self.crop_upsampled, bool):
            raise TypeError(f"crop_upsampled: expected a bool, got {type(self.crop_upsampled).__name__}")
        if self.in_channels % 2:
            raise ValueError(
                f"in_channels = mel_dim + mu_dim + spk_dim + cond_dim = {self.in_channels}: the sinusoidal time "
                "embedding has in_channels features and needs an even width"
            )

    @classmethod
    def cosyvoice1(cls) -> "UNetConfig":
        """CosyVoice-300M's estimator (``cosyvoice.yaml``) with CosyVoice's current mask and length handling."""
        return cls(spk_dim=80, cond_dim=80, channels=(256, 256), n_blocks=4, num_mid_blocks=12, num_heads=8,
                   activation="gelu", attention_mask="key_padding", crop_upsampled=True)

    @property
    def in_channels(self) -> int:
        return self.mel_dim + self.mu_dim + self.spk_dim + self.cond_dim

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.channels[0]

    @property
    def length_multiple(self) -> int:
        """``2^(levels-1)``: the frame counts Matcha accepts are its multiples."""
        return 2 ** (len(self.channels) - 1)


class _Stage(nn.Module):
    """Resnet + ``n_blocks`` transformer blocks; returns ``(h, aux)`` (also the ``mid`` scan body)."""

    config: UNetConfig
    features: int

    @nn.compact
    def __call__(self, h, mask, t_emb, attn_mask, attn_bias):
        cfg = self.config
        h, _ = ResnetBlock1D(self.features, groups=GROUPS, name="resnet")(h, mask, t_emb)  # [b, t, features]
        aux = {"resnet": h}
        for j in range(cfg.n_blocks):
            block = TransformerBlock(cfg.num_heads, cfg.head_dim, cfg.ff_mult, cfg.activation, name=f"tf_{j}")
            h, _ = block(h, attn_mask, bias=attn_bias)
            aux[f"tf{j}"] = h
        return h, aux


def _attention_inputs(mask: Float[Array, "b t"], mode: str):
    """``(mask, bias)`` for the transformer blocks at one resolution (see the module docstring)."""
    if mode == "key_padding":
        return attention_mask(mask), None  # [b, 1, t] bool
    if mode == "additive_keys":
        return None, mask[:, None, :]  # [b, 1, t]
    return None, mask[:, :, None] * mask[:, None, :]  # [b, t, t]


class ConditionalDecoder(nn.Module):
    """Matcha-TTS / CosyVoice1 estimator: ``apply(params, x, cond, t)`` → ``(v, None)`` (the estimators' return
    shape; this one has no streaming cache)."""

    config: UNetConfig = UNetConfig()

    @nn.compact
    def __call__(self, x: Float[Array, "b t m"], cond: MelCond, t: Float[Array, "b"], cache=None, *,
                 return_aux: bool = False):
        """Velocity of the flow at time ``t``.

        Args:
          x: ``[b, t, m]`` noisy mel; ``t`` a multiple of :attr:`UNetConfig.length_multiple` unless
            ``crop_upsampled``.
          cond: :class:`~fmjax.cond.MelCond` with ``mu [b, t, mu_dim]``, ``spks [b, spk_dim]``,
            ``prompt [b, t, cond_dim]`` and ``mask [b, t]``; ``spks``/``prompt`` may be None when their width
            is 0 (pass zero-width arrays instead where :meth:`~fmjax.cond.MelCond.null` is used, e.g. CFG).
          t: ``[b]`` (or scalar) flow time.
          cache: must be None: the non-causal U-Net cannot stream (and ``cond.chunk`` must be None).
          return_aux: also return the intermediates ``t_emb``, ``down<i>.resnet``, ``down<i>.tf<j>``,
            ``down<i>.resample``, ``mid<k>.resnet``, ``mid<k>.tf<j>``, ``up<i>.resnet``, ``up<i>.tf<j>``,
            ``up<i>.resample`` and ``final_block``, all ``[b, t_level, d]``.

        Returns:
          ``(v [b, t, m], None)``, ``v`` zero at padded frames; with ``return_aux`` ``(v, None, aux)``.
        """
        cfg = self.config
        if cache is not None:
            raise ValueError("cache: the Matcha/CosyVoice1 U-Net is not causal and cannot stream (use the causal "
                             "U-Net of CosyVoice2, fmjax.models.causal_unet)")
        if isinstance(cond, MelCond) and cond.chunk is not None:
            raise ValueError("cond.chunk: the Matcha/CosyVoice1 U-Net has no chunk attention masks; pass chunk=None")
        t, spks, prompt = self._check(x, cond, t)
        b, n = x.shape[:2]
        dtype = x.dtype
        mask = cond.mask.astype(dtype)  # [b, t]
        t_emb = TimestepEmbedding(cfg.time_embed_dim, name="time_mlp")(
            sinusoidal_embedding(t, cfg.in_channels).astype(dtype)
        )  # [b, 4·channels[0]]
        spks = jnp.broadcast_to(spks[:, None, :].astype(dtype), (b, n, cfg.spk_dim))
        h = jnp.concatenate([x, cond.mu.astype(dtype), spks, prompt.astype(dtype)], axis=-1)  # [b, t, in_channels]
        aux = {"t_emb": t_emb}

        def masked(a, m):
            return a * m[..., None]

        def record(prefix, stage_aux):
            aux.update({f"{prefix}.{k}": a for k, a in stage_aux.items()})

        levels = len(cfg.channels)
        masks, skips = [mask], []
        for i, width in enumerate(cfg.channels):
            m = masks[-1]
            h, stage_aux = _Stage(cfg, width, name=f"down_{i}")(h, m, t_emb, *_attention_inputs(m, cfg.attention_mask))
            record(f"down{i}", stage_aux)
            skips.append(h)
            if i < levels - 1:
                h = Downsample1D(width, name=f"downsample_{i}")(masked(h, m))  # [b, ceil(t/2), width]
                masks.append(m[:, ::2])  # [b, ceil(t/2)]
            else:
                h = Conv1d(width, 3, padding=1, name=f"downsample_{i}")(masked(h, m))
            aux[f"down{i}.resample"] = h

        if cfg.num_mid_blocks:
            m = masks[-1]
            mid = nn.scan(
                _Stage,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast,) * 4,
                length=cfg.num_mid_blocks,
            )(cfg, cfg.channels[-1], name="mid")
            h, mid_aux = mid(h, m, t_emb, *_attention_inputs(m, cfg.attention_mask))
            for k in range(cfg.num_mid_blocks):
                record(f"mid{k}", {name: a[k] for name, a in mid_aux.items()})

        widths = cfg.channels[::-1] + cfg.channels[:1]
        for i in range(levels):
            m, skip = masks.pop(), skips.pop()
            if cfg.crop_upsampled:
                h = h[:, : skip.shape[1]]
            h = jnp.concatenate([h, skip], axis=-1)  # [b, t_level, 2·widths[i]]
            h, stage_aux = _Stage(cfg, widths[i + 1], name=f"up_{i}")(
                h, m, t_emb, *_attention_inputs(m, cfg.attention_mask)
            )
            record(f"up{i}", stage_aux)
            if i < levels - 1:
                h = Upsample1D(widths[i + 1], name=f"upsample_{i}")(masked(h, m))  # [b, 2·t_level, width]
            else:
                h = Conv1d(widths[i + 1], 3, padding=1, name=f"upsample_{i}")(masked(h, m))
            aux[f"up{i}.resample"] = h

        h, _ = Block1D(cfg.channels[0], GROUPS, name="final_block")(h, mask)
        aux["final_block"] = h
        v = masked(Conv1d(cfg.mel_dim, 1, name="final_proj")(masked(h, mask)), mask)  # [b, t, m]
        return (v, None, aux) if return_aux else (v, None)

    def _check(self, x, cond, t):
        """Static shape checks; returns ``(t [b], spks [b, s], prompt [b, t, c])`` with absent inputs as zero-width
        arrays."""
        cfg = self.config
        if not isinstance(cond, MelCond):
            raise TypeError(f"cond: expected a fmjax.cond.MelCond, got {type(cond).__name__}")
        if getattr(x, "ndim", None) != 3 or x.shape[-1] != cfg.mel_dim:
            raise ValueError(f"x: expected shape [b, t, {cfg.mel_dim}], got {getattr(x, 'shape', type(x))}")
        b, n = x.shape[:2]
        spks = jnp.zeros((b, 0), x.dtype) if cond.spks is None and cfg.spk_dim == 0 else cond.spks
        prompt = jnp.zeros((b, n, 0), x.dtype) if cond.prompt is None and cfg.cond_dim == 0 else cond.prompt
        expected = {
            "cond.mu": (cond.mu, (b, n, cfg.mu_dim)),
            "cond.spks": (spks, (b, cfg.spk_dim)),
            "cond.prompt": (prompt, (b, n, cfg.cond_dim)),
            "cond.mask": (cond.mask, (b, n)),
        }
        for name, (a, shape) in expected.items():
            if tuple(getattr(a, "shape", ())) != shape:
                got = getattr(a, "shape", a)
                raise ValueError(f"{name}: expected shape {shape} for x of shape {x.shape}, got {got}")
        if not cfg.crop_upsampled and n % cfg.length_multiple:
            raise ValueError(
                f"x: {n} frames; a U-Net with {len(cfg.channels)} levels needs a multiple of {cfg.length_multiple} "
                "(pad x, mu, prompt and mask with masked frames, as Matcha's fix_len_compatibility does, or set "
                "crop_upsampled=True for CosyVoice's cropping)"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (b,))
        if t.shape != (b,):
            raise ValueError(f"t: expected shape [{b}] or a scalar, got {t.shape}")
        return t, spks, prompt
