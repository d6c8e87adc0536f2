"""A Griffin-Lim vocoder: log-mel (CosyVoice front-end) -> waveform, without any trained weights.

1. ``mel = exp(log_mel)`` undoes ``log(max(mel, 1e-5))`` (floored values stay at 1e-5).
2. Linear magnitude ``max(mel @ pinv(fb), 0)`` with ``fb`` the front-end's mel filterbank ``[f, m]``
   (:func:`fmjax.audio.mel_filterbank`): the least-squares spectrum whose mel projection is ``mel``.
3. Fast Griffin-Lim (Perraudin et al. 2013, torchaudio's form): alternate between the phase of the STFT of the
   current signal and the target magnitude, with momentum, in a ``lax.fori_loop``.

The STFT is the front-end's own (:func:`fmjax.audio.log_mel`): reflect padding of ``(n_fft - hop) // 2`` on each
side, no centring, a periodic Hann window of ``win``; its inverse overlap-adds windowed frames, divides by the
summed squared window and drops the padding. ``t`` frames give ``t · hop`` samples (480 per frame at 24 kHz).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import signal
from fmjax.audio import MelConfig, mel_filterbank
from fmjax.typing import Array, Complex, Float, Key

__all__ = ["mel_to_magnitude", "griffin_lim", "griffin_lim_vocoder", "spectral_convergence", "analysis_stft"]


def _window(config: MelConfig) -> np.ndarray:
    win = signal.hann_window(config.win)
    left = (config.n_fft - config.win) // 2  # a shorter window sits centred in n_fft, as in torch
    return np.pad(win, (left, config.n_fft - config.win - left))


def analysis_stft(wav: Float[Array, "b L"], config: MelConfig) -> Complex[Array, "b t f"]:
    """The front-end's complex STFT ``[b, t, n_fft//2 + 1]`` (reflect pad ``(n_fft-hop)//2``, no centring)."""
    x = jnp.pad(wav, ((0, 0), (config.pad, config.pad)), mode="reflect")  # [b, L + 2 pad]
    return signal.stft(x, config.n_fft, config.hop, _window(config), center=False)  # [b, t, f]


def _synthesis(spec: Complex[Array, "b t f"], config: MelConfig) -> Float[Array, "b L"]:
    """Least-squares inverse of :func:`analysis_stft`: ``[b, t, f] -> [b, t·hop]``."""
    t = spec.shape[1]
    window = _window(config)
    frames = jnp.fft.irfft(spec, n=config.n_fft, axis=-1) * window  # [b, t, n]
    y = signal.overlap_add(frames, config.hop)  # [b, (t-1)·hop + n]
    env = np.zeros(y.shape[-1])  # summed squared window, in numpy: shapes are static
    for i in range(t):
        env[i * config.hop : i * config.hop + config.n_fft] += window.astype(np.float64) ** 2
    start = config.pad
    length = t * config.hop
    env = env[start : start + length]
    return y[:, start : start + length] / np.maximum(env, 1e-8).astype(np.float32)  # [b, t·hop]


def mel_to_magnitude(log_mel: Float[Array, "b t m"], config: MelConfig = MelConfig()) -> Float[Array, "b t f"]:
    """Linear STFT magnitude ``max(exp(log_mel) @ pinv(fb), 0)``, ``[b, t, n_fft//2 + 1]``."""
    fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)  # [f, m]
    inv = np.linalg.pinv(fb.astype(np.float64)).astype(np.float32)  # [m, f]
    return jnp.maximum(jnp.exp(log_mel) @ inv, 0.0)  # [b, t, f]


def spectral_convergence(wav: Float[Array, "b L"], magnitude: Float[Array, "b t f"], config: MelConfig) -> Float[Array, "b"]:
    """``‖|STFT(wav)| - magnitude‖ / ‖magnitude‖`` per example (0 for a consistent spectrogram)."""
    got = jnp.abs(analysis_stft(wav, config))
    return jnp.linalg.norm((got - magnitude).reshape(wav.shape[0], -1), axis=-1) / jnp.linalg.norm(
        magnitude.reshape(wav.shape[0], -1), axis=-1
    )


@functools.partial(jax.jit, static_argnames=("config", "n_iter"))
def _griffin_lim(magnitude, key, config, n_iter, momentum):
    if key is None:
        angles = jnp.ones(magnitude.shape, jnp.complex64)
    else:
        angles = jnp.exp(2j * jnp.pi * jax.random.uniform(key, magnitude.shape)).astype(jnp.complex64)
    weight = momentum / (1.0 + momentum)

    def body(_, carry):
        angles, previous = carry
        rebuilt = analysis_stft(_synthesis(magnitude * angles, config), config)  # [b, t, f]
        angles = rebuilt - weight * previous
        return angles / (jnp.abs(angles) + 1e-16), rebuilt

    angles, _ = jax.lax.fori_loop(0, n_iter, body, (angles, jnp.zeros_like(angles)))
    return _synthesis(magnitude * angles, config)


def griffin_lim(
    magnitude: Float[Array, "b t f"],
    config: MelConfig = MelConfig(),
    *,
    n_iter: int = 32,
    momentum: float = 0.99,
    key: Key | None = None,
) -> Float[Array, "b L"]:
    """Griffin-Lim phase reconstruction of a linear magnitude ``[b, t, n_fft//2+1]`` -> wav ``[b, t·hop]``.

    ``momentum`` 0 is the classic algorithm; ``key`` draws random initial phases (default: zero phase).
    Jitted per shape; ``momentum`` is traced (changing it does not recompile).
    """
    bins = config.n_fft // 2 + 1
    if magnitude.ndim != 3 or magnitude.shape[-1] != bins or magnitude.shape[1] < 1:
        raise ValueError(f"magnitude: expected shape [b, t >= 1, {bins}], got {tuple(magnitude.shape)}")
    if not (isinstance(n_iter, int) and n_iter >= 0):
        raise ValueError(f"n_iter: expected an int >= 0, got {n_iter!r}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    return _griffin_lim(jnp.asarray(magnitude, jnp.float32), key, config, n_iter, jnp.float32(momentum))


def griffin_lim_vocoder(
    log_mel: Float[Array, "b t m"],
    config: MelConfig = MelConfig(),
    *,
    n_iter: int = 32,
    momentum: float = 0.99,
    key: Key | None = None,
) -> Float[Array, "b L"]:
    """CosyVoice log-mel ``[b, t, n_mels]`` -> wav ``[b, t·hop]`` at ``config.sample_rate`` (24 kHz)."""
    if not hasattr(log_mel, "shape") or not jnp.issubdtype(log_mel.dtype, jnp.floating):
        raise TypeError(f"log_mel: expected a float array [b, t, {config.n_mels}], got {type(log_mel).__name__}")
    if log_mel.ndim != 3 or log_mel.shape[-1] != config.n_mels or log_mel.shape[1] < 1:
        raise ValueError(f"log_mel: expected shape [b, t >= 1, {config.n_mels}] (channels last), got {tuple(log_mel.shape)}")
    if not isinstance(log_mel, jax.core.Tracer) and not np.isfinite(np.asarray(log_mel)).all():
        raise ValueError("log_mel: contains NaN or inf values")
    return griffin_lim(mel_to_magnitude(log_mel, config), config, n_iter=n_iter, momentum=momentum, key=key)
