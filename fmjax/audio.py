"""Audio front-end: wav I/O, resampling, the slaney mel filterbank and CosyVoice2's log-mel features.

:func:`log_mel` restates the mel front-end shared by Matcha-TTS and CosyVoice (``mel_spectrogram`` with
``center=False``): reflect-pad ``(n_fft - hop) // 2`` samples on both sides, a periodic-Hann STFT without
centring, magnitude ``sqrt(re² + im² + 1e-9)``, a librosa-style slaney mel filterbank, then
``log(max(·, 1e-5))``. With the CosyVoice2 defaults (24 kHz, n_fft 1920, hop 480) a signal of ``L`` samples
gives ``L // 480`` frames when ``L`` is a multiple of 480 (50 frames/s), and ``1 + (L - 480) // 480`` in general.
Features are time-major: ``[..., frames, n_mels]``.

Wav I/O and resampling are host-side numpy; :func:`log_mel` is jittable. :func:`save_wav` never clips silently: a
signal that exceeds full scale is soft-limited (:func:`soft_limit`, or peak-normalised / refused on request) with a
warning; :func:`loudness` gives RMS and peak levels in dBFS for comparing generated and reference audio.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import signal
from fmjax.typing import Array, Float

log = logging.getLogger(__name__)

__all__ = [
    "MelConfig",
    "AudioError",
    "load_wav",
    "save_wav",
    "soft_limit",
    "loudness",
    "resample",
    "hz_to_mel",
    "mel_to_hz",
    "mel_filterbank",
    "log_mel",
    "num_frames",
]


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Log-mel front-end settings; the defaults are CosyVoice2's (24 kHz, 50 frames/s, 80 bins up to 8 kHz).

    Matcha-TTS uses ``MelConfig(sample_rate=22050, n_fft=1024, hop=256, win=1024)``.
    """

    sample_rate: int = 24000
    n_fft: int = 1920
    hop: int = 480
    win: int = 1920
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0  # None: sample_rate / 2

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop", "win", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MelConfig.{name}: expected a positive int, got {value!r}")
        if not self.hop <= self.win <= self.n_fft:
            raise ValueError(
                f"MelConfig: expected hop <= win <= n_fft, got hop={self.hop}, win={self.win}, n_fft={self.n_fft}"
            )
        top = self.sample_rate / 2 if self.fmax is None else self.fmax
        if not 0 <= self.fmin < top <= self.sample_rate / 2:
            raise ValueError(
                f"MelConfig: expected 0 <= fmin < fmax <= sample_rate/2 = {self.sample_rate / 2}, "
                f"got fmin={self.fmin}, fmax={self.fmax}"
            )

    @property
    def pad(self) -> int:
        """Reflect padding on each side of the signal, ``(n_fft - hop) // 2``."""
        return (self.n_fft - self.hop) // 2

    @property
    def frame_rate(self) -> float:
        """Frames per second, ``sample_rate / hop``."""
        return self.sample_rate / self.hop


class AudioError(ValueError):
    """An audio file could not be read, or its sample rate is not the one required."""


# ---------------------------------------------------------------------------------------------- wav I/O


def load_wav(path, sr: int | None = None, *, resample_to_sr: bool = False) -> tuple[np.ndarray, int]:
    """Reads an audio file (anything libsndfile reads: wav, flac, ogg, ...) as mono float32.

    Channels are averaged. Samples are in [-1, 1] for integer files (float files are returned as stored).

    Args:
      path: the file.
      sr: required sample rate, or None to accept the file's own.
      resample_to_sr: when ``sr`` is given and the file differs, resample to ``sr`` instead of raising.

    Returns:
      ``(wav [L] float32, sample_rate)``; ``sample_rate == sr`` whenever ``sr`` is given.

    Raises:
      FileNotFoundError: no such file.
      AudioError: the file is not readable audio, or its rate differs from ``sr`` and ``resample_to_sr`` is off.
    """
    import soundfile as sf

    path = pathlib.Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"path: audio file {str(path)!r} does not exist")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises its own error types for unreadable or truncated files
        raise AudioError(f"path: cannot read {str(path)!r} as audio ({type(e).__name__}: {e})") from e
    wav = data.mean(axis=1).astype(np.float32)  # [L]
    if sr is not None and file_sr != sr:
        if not resample_to_sr:
            raise AudioError(
                f"path: {str(path)!r} has sample rate {file_sr} Hz, expected {sr} Hz "
                "(pass resample_to_sr=True to resample it)"
            )
        wav = resample(wav, file_sr, sr)
        file_sr = sr
    return wav, int(file_sr)


LIMIT_KNEE, LIMIT_CEILING = 0.9, 0.99


def soft_limit(wav, knee: float = LIMIT_KNEE, ceiling: float = LIMIT_CEILING) -> np.ndarray:
    """The rule that replaces clipping: samples with ``|x| <= knee`` are unchanged; above it,
    ``sign(x) · (knee + (ceiling - knee) · tanh((|x| - knee) / (ceiling - knee)))`` -- continuous with slope 1 at
    the knee, non-decreasing, and at most ``ceiling`` < 1 (approached asymptotically; float32 rounds inputs far above
    the knee to it), so never full scale. Host-side numpy, float32."""
    x = np.asarray(wav, np.float32)
    if not 0 < knee < ceiling <= 1:
        raise ValueError(f"knee, ceiling: expected 0 < knee < ceiling <= 1, got {knee}, {ceiling}")
    mag = np.abs(x)
    over = mag > knee
    span = ceiling - knee
    limited = knee + span * np.tanh((mag - knee) / span)
    return np.where(over, np.sign(x) * limited, x).astype(np.float32)


def loudness(wav) -> dict[str, float]:
    """Level of a signal in dB relative to full scale: ``rms_dbfs`` (``20·log10(rms)``) and ``peak_dbfs``
    (``20·log10(max |x|)``); ``-inf`` for silence. For reporting generated vs reference loudness."""
    x = np.asarray(wav, np.float64).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"wav: expected a non-empty finite signal, got {x.size} samples"
                         + ("" if x.size == 0 else " with NaN/inf"))
    with np.errstate(divide="ignore"):
        return {"rms_dbfs": float(20 * np.log10(np.sqrt(np.mean(x * x)))),
                "peak_dbfs": float(20 * np.log10(np.max(np.abs(x))))}


def save_wav(path, wav, sr: int, *, subtype: str = "PCM_16", limit: str = "soft") -> None:
    """Writes a mono ``[L]`` float signal (full scale = 1) to ``path``, never clipping silently.

    A signal within [-1, 1] is written as is. One whose peak exceeds 1 (it would clip) is handled by ``limit``,
    always with a logged warning naming the peak and how many samples exceed full scale:

    * ``"soft"`` (default): :func:`soft_limit` -- samples above 0.9 are compressed smoothly below 0.99; the rest
      of the signal is untouched;
    * ``"normalize"``: the whole signal is scaled so its peak is 0.99;
    * ``"error"``: raise ``ValueError``.

    The container follows the suffix (``.wav``, ``.flac``, ...); ``subtype`` is libsndfile's sample format.

    Raises:
      ValueError: not mono, NaN/inf samples, a bad rate, or ``limit="error"`` and the signal would clip.
    """
    import soundfile as sf

    wav = np.asarray(wav, np.float32)
    if wav.ndim != 1:
        raise ValueError(f"wav: expected a mono signal of shape [L], got shape {wav.shape}")
    if not (isinstance(sr, (int, np.integer)) and sr > 0):
        raise ValueError(f"sr: expected a positive int sample rate, got {sr!r}")
    if not np.isfinite(wav).all():
        raise ValueError(f"wav: expected finite samples, got {int(wav.size - np.isfinite(wav).sum())} NaN/inf")
    if limit not in ("soft", "normalize", "error"):
        raise ValueError(f"limit: expected 'soft', 'normalize' or 'error', got {limit!r}")
    path = pathlib.Path(os.fspath(path))
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > 1.0:
        n = int((np.abs(wav) > 1.0).sum())
        if limit == "error":
            raise ValueError(f"wav: peak {peak:.3f} exceeds full scale (1.0) in {n} samples; it would clip")
        wav = soft_limit(wav) if limit == "soft" else (wav * (LIMIT_CEILING / peak)).astype(np.float32)
        how = (f"soft-limited above {LIMIT_KNEE} (peak now {np.abs(wav).max():.3f})" if limit == "soft"
               else f"scaled by {LIMIT_CEILING / peak:.3f} to peak {LIMIT_CEILING}")
        log.warning("%s: the signal's peak %.3f exceeds full scale in %d sample(s) and would clip; %s", path, peak,
                    n, how)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, int(sr), subtype=subtype)


# ------------------------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=16)
def _polyphase_filter(up: int, down: int, zero_crossings: int, beta: float) -> np.ndarray:
    """Kaiser-windowed sinc low-pass for rate ``up/down``: taps ``[2 * half + 1]``, ``half = zc * max(up, down)``,
    cutoff at the lower Nyquist, DC gain ``up`` (zero stuffing by ``up`` divides the level by ``up``)."""
    rate = max(up, down)
    half = zero_crossings * rate
    n = np.arange(-half, half + 1, dtype=np.float64)
    taps = np.sinc(n / rate) * np.kaiser(2 * half + 1, beta)
    taps *= up / taps.sum()
    taps.setflags(write=False)
    return taps


def resample(
    x, sr_in: int, sr_out: int, *, zero_crossings: int = 16, beta: float = 10.0, block: int = 1 << 16
) -> np.ndarray:
    """Band-limited polyphase resampling of a ``[..., L]`` signal from ``sr_in`` to ``sr_out`` (numpy, float32).

    The rate ratio is reduced to ``up/down``; the signal is conceptually zero-stuffed by ``up``, low-passed by
    a Kaiser-windowed sinc (``zero_crossings`` lobes each side, Kaiser ``beta``; cutoff at the lower of the two
    Nyquist frequencies) and kept every ``down``-th sample, with the filter delay removed: the method of
    ``scipy.signal.resample_poly`` (whose default filter is ``zero_crossings=10, beta=5``). The defaults here
    keep a sine's amplitude within 1e-4 below 0.75 x the lower Nyquist and attenuate aliases by about 100 dB.
    Output length: ``ceil(L * sr_out / sr_in)``.
    """
    for name, value in (("sr_in", sr_in), ("sr_out", sr_out)):
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name}: expected a positive int sample rate, got {value!r}")
    x = np.asarray(x, np.float32)
    if x.ndim < 1:
        raise ValueError("x: expected a signal of shape [..., L], got a scalar")
    if sr_in == sr_out:
        return x.copy()
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    h = _polyphase_filter(up, down, zero_crossings, float(beta))
    half = (h.shape[0] - 1) // 2
    n_taps = -(-h.shape[0] // up)  # taps per polyphase branch
    h = np.pad(h, (0, n_taps * up - h.shape[0]))
    length = x.shape[-1]
    n_out = -(-length * up // down)
    xp = np.pad(x.reshape(-1, length).astype(np.float64), ((0, 0), (n_taps, n_taps)))  # zeros outside [0, L)
    out = np.empty((xp.shape[0], n_out), np.float64)
    j = np.arange(n_taps)
    for start in range(0, n_out, block):
        n = np.arange(start, min(start + block, n_out), dtype=np.int64)
        pos = n * down + half  # index into the zero-stuffed signal, shifted by the filter delay
        k_last = pos // up  # the latest input sample the filter reaches
        phase = pos - k_last * up
        taps = h[phase[:, None] + j[None, :] * up]  # [n, taps]
        src = k_last[:, None] - j[None, :] + n_taps  # [n, taps] (into the zero-padded input)
        out[:, start : start + n.shape[0]] = np.einsum("rnj,nj->rn", xp[:, src], taps)
    return out.reshape(*x.shape[:-1], n_out).astype(np.float32)


# ------------------------------------------------------------------------------------- mel filterbank

_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (slaney)
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mel
_LOGSTEP = math.log(6.4) / 27.0  # 27 mel per factor 6.4 above 1 kHz


def hz_to_mel(f):
    """Slaney mel scale (librosa's default, ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    lin = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m):
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, np.float64)
    lin = m * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, lin)


@functools.lru_cache(maxsize=16)
def _filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    bin_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)  # [f] centre frequency of each FFT bin
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [m + 2]
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # [m] each
    rising = (bin_hz[:, None] - lo[None, :]) / (mid - lo)[None, :]  # [f, m]
    falling = (hi[None, :] - bin_hz[:, None]) / (hi - mid)[None, :]  # [f, m]
    tri = np.maximum(0.0, np.minimum(rising, falling))
    weights = (tri * (2.0 / (hi - lo))[None, :]).astype(np.float32)  # slaney: unit area in Hz
    weights.setflags(write=False)
    return weights


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """librosa's ``filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (slaney scale, slaney norm), transposed.

    Filter ``i`` is a triangle over the FFT bin frequencies ``linspace(0, sr/2, n_fft//2 + 1)`` with corners at
    points ``i, i+1, i+2`` of ``n_mels + 2`` points equally spaced on the slaney mel scale from ``fmin`` to
    ``fmax``, peak value ``2 / (f_{i+2} - f_i)`` so that each triangle has unit area in Hz.

    Returns:
      read-only float32 ``[n_fft // 2 + 1, n_mels]``: ``power_or_magnitude [.., f] @ fb -> [.., m]``.
    """
    if fmax is None:
        fmax = sr / 2
    if not (isinstance(n_mels, (int, np.integer)) and n_mels >= 1):
        raise ValueError(f"n_mels: expected a positive int, got {n_mels!r}")
    if not (isinstance(n_fft, (int, np.integer)) and n_fft >= 2):
        raise ValueError(f"n_fft: expected an int >= 2, got {n_fft!r}")
    if not 0 <= fmin < fmax <= sr / 2:
        raise ValueError(f"fmin, fmax: expected 0 <= fmin < fmax <= sr/2 = {sr / 2}, got fmin={fmin}, fmax={fmax}")
    return _filterbank(int(sr), int(n_fft), int(n_mels), float(fmin), float(fmax))


# ------------------------------------------------------------------------------------------- log-mel


def num_frames(length: int, config: MelConfig = MelConfig()) -> int:
    """Frames :func:`log_mel` makes from ``length`` samples: ``1 + (length + 2·pad - n_fft) // hop``."""
    return 1 + (length + 2 * config.pad - config.n_fft) // config.hop


def log_mel(wav: Float[Array, "*b L"], config: MelConfig = MelConfig()) -> Float[Array, "*b t m"]:
    """CosyVoice2 / Matcha-TTS log-mel spectrogram, time-major. Jittable (``config`` is static).

    Args:
      wav: ``[L]`` or ``[b, L]`` float signal at ``config.sample_rate`` (any leading axes are kept), with
        ``L > (n_fft - hop) // 2`` (reflect padding) and ``L >= hop``.
      config: front-end settings (CosyVoice2's by default).

    Returns:
      float32 ``[..., num_frames(L), n_mels]`` natural-log mel magnitudes, floored at ``log(1e-5)``.
    """
    if not isinstance(config, MelConfig):
        raise TypeError(f"config: expected a MelConfig, got {type(config).__name__}")
    shape = np.shape(wav)
    if len(shape) < 1:
        raise ValueError("wav: expected a signal of shape [L] or [b, L], got a scalar")
    dtype = wav.dtype if hasattr(wav, "dtype") else np.asarray(wav).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"wav: expected a floating-point signal, got dtype {dtype}")
    length, pad = shape[-1], config.pad
    if length <= pad or length + 2 * pad < config.n_fft:
        raise ValueError(
            f"wav: expected more than {max(pad, config.n_fft - 2 * pad - 1)} samples along the last axis "
            f"(reflect padding of {pad} and one {config.n_fft}-sample frame), got {length}"
        )
    x = jnp.asarray(wav, jnp.float32)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")  # [..., L + 2 pad]
    window = signal.hann_window(config.win)
    spec = signal.stft(x, config.n_fft, config.hop, window, center=False)  # [..., t, f]
    mag = jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-9)
    fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    mel = jnp.matmul(mag, jnp.asarray(fb), precision=jax.lax.Precision.HIGHEST)  # [..., t, m]
    return jnp.log(jnp.maximum(mel, 1e-5))
