"""The neural source of HiFT: harmonic sine excitation from f0 (``SineGen2`` and the older ``SineGen``).

Both generators turn a frame-rate f0 ``[b, t]`` (Hz; upsampled to samples by repetition, ``upsample``
samples per frame) into ``harmonics = nb_harmonics + 1`` sinusoids at ``f0·(i+1)``, zeroed where the frame is
unvoiced (``f0 <= voiced_threshold``), plus Gaussian noise of std ``noise_std`` (voiced) or ``sine_amp / 3``
(unvoiced). The noise draws are an explicit argument ``noise [b, L, harmonics]`` so that a run can be
reproduced; :func:`draw_sine_noise` draws them from a key *by absolute frame position*, so that a
stream of chunks sees the same noise as one offline call.

* :func:`sinegen2` (CosyVoice2 at 24 kHz): the per-sample phase increments are averaged down to frame rate
  (linear interpolation, ``align_corners=False``), accumulated per frame, scaled by ``upsample`` and linearly
  interpolated back to samples. Its random initial phase is added to sample 0 only, which the down-sampling
  never reads, so it has no effect and is not modelled. The phase is accumulated like torch's CPU ``cumsum``
  (float64 accumulator, float32 results) so that long inputs keep parity.
* :func:`sinegen` (CosyVoice1 / 22.05 kHz): the phase is the per-sample running sum of ``f0·(i+1)/sr``
  (mod 1) plus a random initial phase per harmonic (0 for the fundamental), which *does* matter:
  :func:`draw_initial_phase`. It is computed per frame plus an in-frame ramp, which is exact for the
  piecewise-constant upsampled f0 and keeps full float32 precision for long inputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry_2x32

from fmjax.nn.hift_blocks import sin
from fmjax.typing import Array, Float, Key

__all__ = [
    "sinegen2",
    "sinegen",
    "voicing",
    "draw_sine_noise",
    "draw_initial_phase",
    "cumsum_like_torch",
    "SourceModule",
]


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def cumsum_like_torch(x: Float[Array, "b t h"], axis: int = 1) -> Float[Array, "b t h"]:
    """float32 prefix sums with a (hi, lo) double-float accumulator: each output is the float32 rounding of an
    almost exact running sum, as torch's CPU ``cumsum`` (float64 accumulator) produces it."""

    def combine(p, q):
        s, e = _two_sum(p[0], q[0])
        e = e + (p[1] + q[1])
        hi = s + e
        return hi, e - (hi - s)

    hi, _ = lax.associative_scan(combine, (x, jnp.zeros_like(x)), axis=axis)
    return hi


def _true_divide(x, divisor: float):
    """``x / divisor`` correctly rounded. XLA on CPU rewrites a division by a scalar as a product with its
    reciprocal (a different rounding); a divisor that is elementwise data to the compiler keeps the division."""
    return x / jnp.where(jnp.isnan(x), 1.0, divisor)


def voicing(f0: Float[Array, "b t"], noise_std: float, sine_amp: float, voiced_threshold: float):
    """Per frame: ``uv`` (1 voiced, 0 unvoiced) and the noise std ``uv·noise_std + (1-uv)·sine_amp/3``."""
    uv = (f0 > voiced_threshold).astype(jnp.float32)  # [b, t]
    return uv, uv * noise_std + (1.0 - uv) * (sine_amp / 3)


def _mix(sines_or_none, uv, noise_amp, noise, upsample):
    """``sines·uv + noise_amp·noise`` with frame-rate ``uv`` / ``noise_amp`` repeated to samples."""
    b, t = uv.shape
    noise = noise.reshape(b, t, upsample, -1)  # [b, t, u, h]
    out = noise_amp[:, :, None, None] * noise
    if sines_or_none is not None:
        out = sines_or_none.reshape(noise.shape) * uv[:, :, None, None] + out
    return out.reshape(b, t * upsample, -1)  # [b, L, h]


def _linear_upsample_weights(t: int, upsample: int):
    """torch ``interpolate(scale_factor=upsample, mode='linear', align_corners=False)`` taps for ``t -> t·u``
    samples: source position ``(1/u)·(n + 0.5) - 0.5`` clamped at 0; returns ``i0, i1 [L]`` and ``l1 [L]``."""
    n = jnp.arange(t * upsample, dtype=jnp.float32)
    scale = jnp.float32(1.0 / upsample)
    src = jnp.maximum(scale * (n + 0.5) - 0.5, 0.0)  # [L]
    i0 = jnp.minimum(src.astype(jnp.int32), t - 1)
    i1 = jnp.minimum(i0 + 1, t - 1)
    l1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    return i0, i1, l1


def sinegen2(
    f0: Float[Array, "b t"],
    noise: Float[Array, "b L h"],
    *,
    sampling_rate: float,
    upsample: int,
    sine_amp: float = 0.1,
    noise_std: float = 0.003,
    voiced_threshold: float = 10.0,
) -> Float[Array, "b L h"]:
    """SineGen2 excitation ``[b, t·upsample, h]`` from frame f0 ``[b, t]`` and standard-normal ``noise``."""
    b, t = f0.shape
    h = noise.shape[-1]
    fn = f0[:, :, None] * jnp.arange(1, h + 1, dtype=jnp.float32)  # [b, t, h]
    rad = _true_divide(fn, sampling_rate)
    rad = rad - jnp.floor(rad)  # mod 1; the frame-rate average of a constant frame is the frame value
    phase = cumsum_like_torch(rad, axis=1) * 2 * np.pi  # [b, t, h], includes frame k itself
    # Two roundings as in the original: keep XLA from folding 2π·upsample into one constant.
    phase = lax.optimization_barrier(phase) * upsample
    i0, i1, l1 = _linear_upsample_weights(t, upsample)
    l0 = 1.0 - l1
    phase_up = phase[:, i0] * l0[:, None] + phase[:, i1] * l1[:, None]  # [b, L, h]
    sines = sin(phase_up) * sine_amp
    uv, noise_amp = voicing(f0, noise_std, sine_amp, voiced_threshold)
    return _mix(sines, uv, noise_amp, noise, upsample)


def sinegen(
    f0: Float[Array, "b t"],
    noise: Float[Array, "b L h"],
    initial_phase: Float[Array, "b h"],
    *,
    sampling_rate: float,
    upsample: int,
    sine_amp: float = 0.1,
    noise_std: float = 0.003,
    voiced_threshold: float = 10.0,
) -> Float[Array, "b L h"]:
    """SineGen excitation ``[b, t·upsample, h]``: ``sine_amp·sin(2π·frac(Σ_{m<=n} f0[m]·(i+1)/sr) + φ_i)``.

    ``initial_phase [b, h]`` is ``φ`` (the original draws ``U(-π, π)`` and zeroes the fundamental's).
    """
    b, t = f0.shape
    h = noise.shape[-1]
    inc = f0[:, :, None] * jnp.arange(1, h + 1, dtype=jnp.float32) / sampling_rate  # [b, t, h] cycles/sample
    per_frame = inc * upsample
    per_frame = per_frame - jnp.floor(per_frame)  # only the fractional cycles carry over
    start = cumsum_like_torch(per_frame, axis=1) - per_frame  # [b, t, h] cycles before each frame
    start = start - jnp.floor(start)
    ramp = jnp.arange(1, upsample + 1, dtype=jnp.float32)  # [u] samples 1..u of the frame, inclusive sum
    cycles = start[:, :, None, :] + inc[:, :, None, :] * ramp[:, None]  # [b, t, u, h]
    cycles = cycles - jnp.floor(cycles)
    theta = 2 * np.pi * cycles + initial_phase[:, None, None, :]
    sines = sin(theta) * sine_amp
    uv, noise_amp = voicing(f0, noise_std, sine_amp, voiced_threshold)
    return _mix(sines.reshape(b, t * upsample, h), uv, noise_amp, noise, upsample)


def draw_sine_noise(
    key: Key, batch: int, frames: int, upsample: int, harmonics: int, *, start_frame=0, rows=None
) -> Float[Array, "b L h"]:
    """Standard-normal source noise ``[batch, frames·upsample, harmonics]`` fixed by absolute position.

    Value ``(r, n, i)`` (row, absolute sample ``start_frame·upsample + n``, harmonic) is a counter-based
    Threefry draw on the counter pair (flat position // 2, ``rows[r]``), so a chunk starting at ``start_frame`` (a
    Python int, an int32 scalar, or one start per row ``[b]``) gets exactly the slice that one offline call draws,
    and one vectorised hash serves the whole array (compiling ``vmap``-ed per-frame keys is far slower). ``rows``
    (``[b]`` int, default ``0 .. b-1``) are the streams' ids: a stream's noise depends on its id, never on where it
    sits in a batch. Bits become normals as ``jax.random.normal`` does (uniform on (-1, 1), then ``√2·erfinv``).
    Positions wrap after 2³² draws (hours).
    """
    if (upsample * harmonics) % 2:
        raise ValueError(f"upsample * harmonics: expected an even count per frame, got {upsample} * {harmonics}")
    per_frame = upsample * harmonics // 2  # counter pairs per frame
    seed = jax.random.bits(key, (2,), jnp.uint32)
    start = jnp.broadcast_to(jnp.asarray(start_frame).astype(jnp.uint32), (batch,))[:, None]  # [b, 1]
    pair = start * jnp.uint32(per_frame) + jnp.arange(frames * per_frame, dtype=jnp.uint32)[None, :]  # [b, P]
    ids = jnp.arange(batch, dtype=jnp.uint32) if rows is None else jnp.asarray(rows).astype(jnp.uint32)
    count = jnp.stack(jnp.broadcast_arrays(pair, ids[:, None]))  # [2, b, P]: (position, stream id) words
    bits = threefry_2x32(seed, count.reshape(-1)).reshape(2, batch, -1)  # both output words are used
    bits = jnp.stack([bits[0], bits[1]], axis=-1).reshape(batch, frames * upsample, harmonics)  # [b, L, h]
    unit = lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # [0, 1)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = jnp.maximum(lo, unit * (1.0 - lo) + lo)  # (-1, 1)
    return np.float32(np.sqrt(2.0)) * lax.erf_inv(u)


def draw_initial_phase(key: Key, batch: int, harmonics: int, *, rows=None) -> Float[Array, "b h"]:
    """SineGen's initial phases ``U(-π, π)`` per harmonic, 0 for the fundamental: ``[batch, harmonics]``; row ``r``
    draws from ``fold_in(key, rows[r])`` (``rows`` default ``0 .. b-1``: the streams' ids)."""
    ids = jnp.arange(batch) if rows is None else jnp.asarray(rows)
    phase = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (harmonics,), minval=-np.pi,
                                                  maxval=np.pi))(ids)
    return phase.at[:, 0].set(0.0)


class SourceModule(nn.Module):
    """``SourceModuleHnNSF``'s merge: ``tanh(l_linear(sine_waves))`` -> source ``[b, L]``.

    Submodule ``l_linear``: Dense(harmonics -> 1).
    """

    @nn.compact
    def __call__(self, sine_waves: Float[Array, "b L h"]) -> Float[Array, "b L"]:
        return jnp.tanh(nn.Dense(1, name="l_linear")(sine_waves))[..., 0]  # [b, L]
