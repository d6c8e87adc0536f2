"""Building blocks of the HiFT vocoder (HiFi-GAN/BigVGAN family), channels last ``[b, t, d]``.

* :class:`Snake`: ``x + sin²(α·x) / (α + 1e-9)`` with a per-channel ``α`` in linear scale.
* :class:`ResBlock`: the HiFi-GAN "resblock 1" with Snake activations: for each dilation ``d``,
  ``x += conv2(snake2(conv1_d(snake1(x))))`` with "same" zero padding.
* :class:`UpsampleConvTranspose1d`: torch ``ConvTranspose1d`` computed in polyphase form, which does
  ``stride``× less work than convolving a zero-stuffed input.

Conv kernels are in Flax layout ``[k, in, out]``; converters fold weight norm before filling them.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from fmjax.nn.conv import Conv1d
from fmjax.typing import Array, Float

__all__ = ["sin", "sin_small", "cos_small", "Snake", "ResBlock", "UpsampleConvTranspose1d", "polyphase_kernel"]


def _pi_parts(bits: int = 8, parts: int = 4) -> tuple[np.float32, ...]:
    """π as a sum of float32 constants; all but the last have ``bits`` significant bits, so ``k·part`` is exact
    for ``|k| < 2**(24 - bits)`` (Cody-Waite range reduction)."""
    out, rest = [], np.float64(np.pi)
    for _ in range(parts - 1):
        e = np.floor(np.log2(rest))
        q = np.float32(np.floor(rest / 2 ** (e - bits + 1)) * 2 ** (e - bits + 1))  # truncate: rest stays > 0
        out.append(q)
        rest -= np.float64(q)
    return (*out, np.float32(rest))


_PI_PARTS = _pi_parts()
# Taylor coefficients of sin(r)/r - 1 and of cos(r) - 1 in powers of r², highest first (truncation < 1e-9 on
# [-π/2, π/2], below float32 rounding).
_SIN_COEFFS = tuple(np.float32((-1) ** i / math.factorial(2 * i + 1)) for i in range(7, 0, -1))
_COS_COEFFS = tuple(np.float32((-1) ** i / math.factorial(2 * i)) for i in range(8, 0, -1))


def _horner(r2, coeffs):
    p = jnp.full_like(r2, coeffs[0])
    for c in coeffs[1:]:
        p = p * r2 + c
    return p * r2


def sin_small(r: Float[Array, "..."]) -> Float[Array, "..."]:
    """``sin r`` for ``|r| <= π/2`` as a polynomial (no range reduction)."""
    return r + r * _horner(r * r, _SIN_COEFFS)


def cos_small(r: Float[Array, "..."]) -> Float[Array, "..."]:
    """``cos r`` for ``|r| <= π/2`` as a polynomial (no range reduction)."""
    return 1.0 + _horner(r * r, _COS_COEFFS)


def sin(y: Float[Array, "..."]) -> Float[Array, "..."]:
    """``sin y`` to a few 1e-7 absolute, as multiply-adds that XLA vectorises.

    XLA on CPU evaluates ``jnp.sin`` one element at a time (about 20× slower here), and HiFT takes a sine of
    every Snake activation (180 M of them for 10 s of audio) and of every source sample. ``y`` is reduced to
    ``r = y - k·π`` in ``[-π/2, π/2]`` (exact for ``|y| < 2·10⁵``, gracefully worse beyond), then
    ``sin y = (-1)^k · sin r``.
    """
    k = jnp.round(y * np.float32(1 / np.pi))
    r = y
    for part in _PI_PARTS:
        r = r - k * part
    odd = k - 2.0 * jnp.floor(0.5 * k)  # k mod 2
    return (1.0 - 2.0 * odd) * sin_small(r)


class Snake(nn.Module):
    """Snake activation ``x + (1 / (α + 1e-9)) · sin²(α·x)`` per channel; param ``alpha [d]`` (init 1)."""

    eps: float = 1e-9

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        alpha = self.param("alpha", nn.initializers.ones, (x.shape[-1],))
        inv = 1.0 / (alpha + self.eps)  # [d]; a reciprocal then a product, as the original computes it
        return x + inv * jnp.square(sin(x * alpha))


class ResBlock(nn.Module):
    """HiFi-GAN residual block with Snake activations (``channels`` in = out).

    Submodules per dilation index ``j``: ``activations1_j``, ``convs1_j`` (dilation ``d_j``),
    ``activations2_j``, ``convs2_j`` (dilation 1); all convs ``kernel_size`` wide with "same" padding.
    """

    kernel_size: int
    dilations: tuple[int, ...] = (1, 3, 5)

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        ch, k = x.shape[-1], self.kernel_size
        for j, d in enumerate(self.dilations):
            xt = Snake(name=f"activations1_{j}")(x)
            xt = Conv1d(ch, k, padding=d * (k - 1) // 2, dilation=d, name=f"convs1_{j}")(xt)
            xt = Snake(name=f"activations2_{j}")(xt)
            xt = Conv1d(ch, k, padding=(k - 1) // 2, name=f"convs2_{j}")(xt)
            x = xt + x
        return x


def polyphase_kernel(kernel: np.ndarray | Array, stride: int, padding: int):
    """Rewrites a transposed-conv kernel ``[k, in, out]`` (torch tap order) as a plain conv kernel
    ``[r, in, stride·out]`` plus the ``(left, right)`` zero padding of that conv.

    Output sample ``n·stride + s`` of the transposed conv is ``Σ_m x[n - m] · W[m·stride + s + padding]``
    (taps outside ``[0, k)`` are zero), so phase ``s`` is an ordinary correlation over ``x``; the ``stride``
    phases become ``stride`` groups of output channels, interleaved back into time by a reshape.
    """
    k = kernel.shape[0]
    lo = min(-((s + padding) // stride) for s in range(stride))  # smallest m with a valid tap
    hi = max((k - 1 - s - padding) // stride for s in range(stride))  # largest m
    taps = np.zeros((hi - lo + 1, stride), np.int64)  # tap index into W, -1 for none
    for t in range(hi - lo + 1):
        m = hi - t
        for s in range(stride):
            j = m * stride + s + padding
            taps[t, s] = j if 0 <= j < k else -1
    valid = jnp.asarray(taps >= 0)[:, None, :, None]  # [r, 1, stride, 1]
    w = jnp.asarray(kernel)[np.maximum(taps, 0)]  # [r, stride, in, out]
    w = jnp.where(valid, w.transpose(0, 2, 1, 3), 0.0)  # [r, in, stride, out]
    return w.reshape(w.shape[0], w.shape[1], stride * w.shape[3]), (hi, -lo)


class UpsampleConvTranspose1d(nn.Module):
    """torch ``ConvTranspose1d(in, features, kernel_size, stride, padding)`` on ``[b, t, d]`` whose output
    length is exactly ``stride·t`` (``kernel_size - stride == 2·padding``), in polyphase form.

    Params: ``kernel [k, in, features]`` in torch's tap order (torch ``(in, out, k)`` -> ``transpose(2, 0, 1)``),
    ``bias [features]``.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t2 e"]:
        """``[b, t, d]`` -> ``[b, stride·t, features]``."""
        if self.kernel_size - self.stride != 2 * self.padding:
            raise ValueError(
                f"kernel_size - stride must equal 2*padding for an exact {self.stride}x upsampling, got "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
            )
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        w, pad = polyphase_kernel(kernel, self.stride, self.padding)
        y = lax.conv_general_dilated(
            x, w.astype(x.dtype), (1,), (pad,), dimension_numbers=("NWC", "WIO", "NWC")
        )  # [b, t, stride·features]
        b, t = y.shape[:2]
        return y.reshape(b, t * self.stride, self.features) + bias  # [b, stride·t, features]
