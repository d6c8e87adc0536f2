"""Griffin-Lim vocoder on a synthetic harmonic signal: mel -> wav -> mel error, convergence, errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.audio import MelConfig, log_mel, mel_filterbank
from fmjax.griffin_lim import analysis_stft, griffin_lim, griffin_lim_vocoder, mel_to_magnitude, spectral_convergence

CFG = MelConfig()  # CosyVoice2: 24 kHz, n_fft 1920, hop 480, 80 bins up to 8 kHz


@pytest.fixture(scope="module")
def harmonic():
    """1 s of a 150 Hz tone with 3 Hz vibrato and 19 harmonics (amplitude 1/k), 50 ms fades."""
    sr, n = 24000, 24000
    t = np.arange(n) / sr
    phase = 2 * np.pi * np.cumsum(150 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / sr
    x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 20)) * np.minimum(1, np.minimum(t, t[::-1]) / 0.05)
    wav = jnp.asarray(x[None], jnp.float32)
    return wav, log_mel(wav, CFG)


def test_analysis_stft_is_the_front_end(harmonic):
    wav, lm = harmonic
    fb = mel_filterbank(CFG.sample_rate, CFG.n_fft, CFG.n_mels, CFG.fmin, CFG.fmax)
    mag = jnp.sqrt(jnp.abs(analysis_stft(wav, CFG)) ** 2 + 1e-9)
    np.testing.assert_allclose(np.asarray(jnp.log(jnp.maximum(mag @ fb, 1e-5))), np.asarray(lm), atol=1e-4)


def test_mel_to_magnitude_is_the_clipped_least_squares_spectrum():
    fb = mel_filterbank(CFG.sample_rate, CFG.n_fft, CFG.n_mels, CFG.fmin, CFG.fmax).astype(np.float64)
    mel = np.random.default_rng(0).uniform(0.5, 2.0, (1, 3, 80))
    mag = np.asarray(mel_to_magnitude(jnp.log(jnp.asarray(mel, jnp.float32)), CFG))
    # minimum-norm x with x @ fb = mel, solved independently in float64, then clipped at 0
    want = np.maximum(np.linalg.lstsq(fb.T, mel[0].T, rcond=None)[0].T, 0)
    assert mag.shape == (1, 3, 961)
    np.testing.assert_allclose(mag[0], want, atol=1e-4 * np.abs(want).max())  # fp32 matmul of a float64 pinv


def test_griffin_lim_round_trip_log_mel(harmonic):
    wav, lm = harmonic
    out = griffin_lim_vocoder(lm, CFG, n_iter=32)
    assert out.shape == wav.shape == (1, 24000)  # 480 samples per frame
    back = np.asarray(log_mel(out, CFG))[0]
    ref = np.asarray(lm)[0]
    active = ref > ref.max() - 4.0  # cells within 4 nats (35 dB) of the peak: 45 % of them here
    err = np.abs(back - ref)[active].mean()
    assert err < 0.2, err  # measured 0.13 nats
    rel = np.linalg.norm(np.exp(back) - np.exp(ref)) / np.linalg.norm(np.exp(ref))
    assert rel < 0.2, rel  # measured 0.14


def test_griffin_lim_more_iterations_converge(harmonic):
    _, lm = harmonic
    mag = mel_to_magnitude(lm, CFG)
    sc = [float(spectral_convergence(griffin_lim(mag, CFG, n_iter=n), mag, CFG)[0]) for n in (0, 4, 32)]
    assert sc[0] > sc[1] > sc[2], sc  # measured 0.85, 0.23, 0.17
    assert sc[2] < 0.2, sc


def test_griffin_lim_errors(harmonic):
    _, lm = harmonic
    with pytest.raises(ValueError, match=r"log_mel: expected shape \[b, t >= 1, 80\]"):
        griffin_lim_vocoder(lm[..., :79], CFG)
    with pytest.raises(ValueError, match="log_mel: contains NaN"):
        griffin_lim_vocoder(lm.at[0, 2, 3].set(jnp.nan), CFG)
    with pytest.raises(TypeError, match="log_mel: expected a float array"):
        griffin_lim_vocoder(np.zeros((1, 4, 80), np.int32), CFG)
    with pytest.raises(ValueError, match="momentum"):
        griffin_lim(mel_to_magnitude(lm, CFG), CFG, momentum=1.0)
    with pytest.raises(ValueError, match=r"magnitude: expected shape \[b, t >= 1, 961\]"):
        griffin_lim(jnp.zeros((1, 4, 80)), CFG)
