"""Convolutional blocks of the Matcha-TTS / CosyVoice 1-D U-Nets, channels last, with frame masks.

* :class:`Block1D` (Matcha): ``mish(GroupNorm_8(conv_k3_pad1(x·mask)))·mask``.
* :class:`CausalBlock1D` (CosyVoice2): ``mish(LayerNorm(causal_conv_k3(x·mask)))·mask``; streams with a
  2-frame :class:`~fmjax.nn.conv.ConvCache`.
* :class:`ResnetBlock1D`: ``block2(block1(x) + time_proj(mish(t_emb))) + res_conv_1x1(x·mask)``, with causal or
  Matcha blocks. Its output is **not** re-masked (the 1×1 bias reaches padded frames, as in the originals).
* :class:`Downsample1D` (conv k=3, stride 2, pad 1) and :class:`Upsample1D` (ConvTranspose k=4, stride 2,
  pad 1): Matcha's resolution changes, applied by the caller to ``x·mask``.

``mask`` is a ``[b, t]`` float frame mask (1 = valid). Param names: ``conv``, ``norm``, ``block1``, ``block2``,
``time_proj`` (torch ``mlp.1``), ``res_conv``.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmjax.nn.conv import CausalConv1d, Conv1d, ConvCache, ConvTranspose1d
from fmjax.nn.transformer import layer_norm
from fmjax.typing import Array, Float


def mish(x):
    """``x·tanh(softplus(x))`` (torch ``nn.Mish``)."""
    return x * jnp.tanh(jax.nn.softplus(x))


def _masked(x, mask):
    return x * mask[..., None].astype(x.dtype)


class Block1D(nn.Module):
    """Matcha ``Block1D``: conv k=3 (pad 1) → GroupNorm(``groups``, eps 1e-5) → Mish, input and output masked."""

    features: int
    groups: int = 8

    @nn.compact
    def __call__(
        self, x: Float[Array, "b t d"], mask: Float[Array, "b t"], cache: None = None
    ) -> tuple[Float[Array, "b t e"], None]:
        """``[b, t, d]`` -> ``([b, t, features], None)``; not streamable (the conv looks one frame ahead)."""
        if cache is not None:
            raise ValueError("cache: Block1D is not causal and cannot stream; use CausalBlock1D")
        h = Conv1d(self.features, 3, padding=1, name="conv")(_masked(x, mask))  # [b, t, features]
        h = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, use_fast_variance=False, name="norm")(h)
        return _masked(mish(h), mask), None


class CausalBlock1D(nn.Module):
    """CosyVoice2 ``CausalBlock1D``: causal conv k=3 → LayerNorm over channels (eps 1e-5) → Mish, masked."""

    features: int

    @nn.compact
    def __call__(
        self, x: Float[Array, "b t d"], mask: Float[Array, "b t"], cache: ConvCache | None = None
    ) -> tuple[Float[Array, "b t e"], ConvCache | None]:
        """``[b, t, d]`` -> ``([b, t, features], new_cache)``; ``new_cache`` is None offline."""
        h, cache = CausalConv1d(self.features, 3, name="conv")(_masked(x, mask), cache)  # [b, t, features]
        h = layer_norm(1e-5, "norm")(h)
        return _masked(mish(h), mask), cache

    @nn.nowrap
    def init_cache(self, batch: int, in_features: int, dtype=jnp.float32) -> ConvCache:
        """Two zero frames of input history."""
        return ConvCache(jnp.zeros((batch, 2, in_features), dtype))


class ResnetCache(NamedTuple):
    """Streaming state of a causal :class:`ResnetBlock1D`: the conv histories of its two blocks."""

    block1: ConvCache
    block2: ConvCache


class ResnetBlock1D(nn.Module):
    """Matcha ``ResnetBlock1D`` (``causal=False``, GroupNorm blocks) or CosyVoice2 ``CausalResnetBlock1D``
    (``causal=True``, :class:`CausalBlock1D`, streamable).

    Attributes:
      features: output width.
      causal: block type.
      groups: GroupNorm groups (non-causal only).
    """

    features: int
    causal: bool = False
    groups: int = 8

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        mask: Float[Array, "b t"],
        t_emb: Float[Array, "b e"],
        cache: ResnetCache | None = None,
    ) -> tuple[Float[Array, "b t f"], ResnetCache | None]:
        """``x [b, t, d]``, ``t_emb [b, e]`` -> ``(y [b, t, features], new_cache)``."""
        if self.causal:
            block1, block2 = CausalBlock1D(self.features, name="block1"), CausalBlock1D(self.features, name="block2")
        else:
            block1 = Block1D(self.features, self.groups, name="block1")
            block2 = Block1D(self.features, self.groups, name="block2")
        h, c1 = block1(x, mask, None if cache is None else cache.block1)
        h = h + nn.Dense(self.features, name="time_proj")(mish(t_emb))[:, None, :]  # [b, t, features]
        h, c2 = block2(h, mask, None if cache is None else cache.block2)
        y = h + Conv1d(self.features, 1, name="res_conv")(_masked(x, mask))  # [b, t, features]
        return y, (None if cache is None else ResnetCache(c1, c2))

    @nn.nowrap
    def init_cache(self, batch: int, in_features: int, dtype=jnp.float32) -> ResnetCache:
        """Zero conv histories (causal blocks only)."""
        if not self.causal:
            raise ValueError("init_cache: only a causal ResnetBlock1D streams")
        return ResnetCache(
            ConvCache(jnp.zeros((batch, 2, in_features), dtype)), ConvCache(jnp.zeros((batch, 2, self.features), dtype))
        )


class Downsample1D(nn.Module):
    """Matcha ``Downsample1D``: conv k=3, stride 2, pad 1 (``t -> ceil(t/2)``)."""

    features: int

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t2 d"]:
        """``[b, t, d]`` -> ``[b, ceil(t/2), features]``."""
        return Conv1d(self.features, 3, stride=2, padding=1, name="conv")(x)  # [b, ceil(t/2), features]


class Upsample1D(nn.Module):
    """Matcha ``Upsample1D(use_conv_transpose=True)``: ConvTranspose k=4, stride 2, pad 1 (``t -> 2t``)."""

    features: int

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t2 d"]:
        """``[b, t, d]`` -> ``[b, 2t, features]``."""
        return ConvTranspose1d(self.features, 4, stride=2, padding=1, name="conv")(x)  # [b, 2t, features]
