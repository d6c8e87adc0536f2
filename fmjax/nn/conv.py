"""1-D convolutions, channels last, with torch semantics, and a causal convolution with a streaming cache.

Kernels are stored in Flax layout ``[k, in/groups, out]``; a torch Conv1d weight ``(out, in/groups, k)`` maps to
it by ``w.transpose(2, 1, 0)``. ConvTranspose1d keeps torch's tap order too: torch ``(in, out, k)`` maps to
``[k, in, out]`` by ``w.transpose(2, 0, 1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from fmjax.typing import Array, Float

def _pair(padding: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(padding, int):
        return (padding, padding)
    left, right = padding
    return (int(left), int(right))


def _conv_params(module: nn.Module, d_in: int, features: int, kernel_size: int, groups: int, use_bias: bool):
    if d_in % groups or features % groups:
        raise ValueError(f"x: channels {d_in} and features {features} must both be divisible by groups={groups}")
    kernel = module.param("kernel", nn.initializers.lecun_normal(), (kernel_size, d_in // groups, features))
    bias = module.param("bias", nn.initializers.zeros, (features,)) if use_bias else None
    return kernel, bias


def _conv(x, kernel, bias, *, stride=1, padding=(0, 0), dilation=1, groups=1, lhs_dilation=1):
    y = lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride,),
        padding=(padding,),
        lhs_dilation=(lhs_dilation,),
        rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
    )  # [b, t', out]
    return y if bias is None else y + bias.astype(y.dtype)


class Conv1d(nn.Module):
    """torch ``Conv1d`` on ``[b, t, d]``: zero padding (symmetric int or ``(left, right)``), stride, dilation,
    groups, optional bias. Output length ``(t + left + right - dilation·(k-1) - 1) // stride + 1``.

    Params: ``kernel [k, in/groups, out]``, ``bias [out]``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int | tuple[int, int] = 0
    dilation: int = 1
    groups: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t2 e"]:
        """``[b, t, d]`` -> ``[b, t', features]``."""
        kernel, bias = _conv_params(self, x.shape[-1], self.features, self.kernel_size, self.groups, self.use_bias)
        return _conv(
            x, kernel, bias, stride=self.stride, padding=_pair(self.padding), dilation=self.dilation, groups=self.groups
        )  # [b, t', features]


class ConvTranspose1d(nn.Module):
    """torch ``ConvTranspose1d`` on ``[b, t, d]`` (groups 1): output length
    ``(t - 1)·stride - 2·padding + dilation·(k - 1) + output_padding + 1``.

    Params: ``kernel [k, in, out]`` in torch's tap order, ``bias [out]``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    dilation: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t2 e"]:
        """``[b, t, d]`` -> ``[b, t', features]``."""
        kernel, bias = _conv_params(self, x.shape[-1], self.features, self.kernel_size, 1, self.use_bias)
        edge = self.dilation * (self.kernel_size - 1) - self.padding
        if edge < 0:
            raise ValueError(f"padding={self.padding} exceeds dilation*(kernel_size-1)")
        # A transposed conv is a conv of the stride-dilated input with the tap-reversed kernel.
        return _conv(
            x, kernel[::-1], bias, padding=(edge, edge + self.output_padding), dilation=self.dilation,
            lhs_dilation=self.stride,
        )  # [b, t', features]


class ConvCache(NamedTuple):
    """Streaming state of a :class:`CausalConv1d`: the last ``dilation·(k-1)`` input frames, ``[b, r, d]``."""

    history: Float[Array, "b r d"]


class CausalConv1d(nn.Module):
    """Causal conv: left zero padding of ``dilation·(k-1)`` frames, stride 1 (CosyVoice's ``CausalConv1d``).

    Offline (``cache=None``) the sequence starts from zeros. Streaming, the input continues the frames held in
    the cache, so feeding a sequence chunk by chunk gives exactly the offline output. Params as :class:`Conv1d`.
    """

    features: int
    kernel_size: int
    dilation: int = 1
    groups: int = 1
    use_bias: bool = True

    @nn.nowrap
    def receptive(self) -> int:
        """Frames of left context a step needs: ``dilation·(kernel_size-1)``."""
        return self.dilation * (self.kernel_size - 1)

    @nn.nowrap
    def init_cache(self, batch: int, in_features: int, dtype=jnp.float32) -> ConvCache:
        """Zero history (the same zeros the offline path pads with): ``history [batch, receptive, in_features]``."""
        return ConvCache(jnp.zeros((batch, self.receptive(), in_features), dtype))

    @nn.compact
    def __call__(
        self, x: Float[Array, "b t d"], cache: ConvCache | None = None
    ) -> tuple[Float[Array, "b t e"], ConvCache | None]:
        """``x [b, t, d]`` -> ``(y [b, t, features], new_cache)``; ``new_cache`` is None offline."""
        r = self.receptive()
        if cache is None:
            padded = jnp.pad(x, ((0, 0), (r, 0), (0, 0)))  # [b, r + t, d]
            new_cache = None
        else:
            hist = cache.history
            if hist.shape != (x.shape[0], r, x.shape[-1]):
                raise ValueError(
                    f"cache.history: expected shape {(x.shape[0], r, x.shape[-1])} for x of shape {x.shape}, "
                    f"got {hist.shape}"
                )
            padded = jnp.concatenate([hist.astype(x.dtype), x], axis=1)  # [b, r + t, d]
            new_cache = ConvCache(padded[:, padded.shape[1] - r :].astype(hist.dtype))
        kernel, bias = _conv_params(self, x.shape[-1], self.features, self.kernel_size, self.groups, self.use_bias)
        y = _conv(padded, kernel, bias, dilation=self.dilation, groups=self.groups)  # [b, t, features]
        return y, new_cache
