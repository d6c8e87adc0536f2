"""Audio front-end: slaney filterbank, CosyVoice2 log-mel, resampling, wav I/O."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import numpy as np
import pytest

from fmjax import audio

SR, N_FFT, HOP, N_MELS, FMAX = 24000, 1920, 480, 80, 8000.0


# --- an independent statement of the slaney mel scale and filterbank (librosa's definitions) -------------
def _slaney_mel(f):
    f = np.asarray(f, np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-9) / 1000.0) / np.log(6.4))


def _slaney_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * 6.4 ** ((m - 15.0) / 27.0))


def _reference_fb(sr, n_fft, n_mels, fmin, fmax):
    """Triangles by linear interpolation between mel-spaced corners, scaled to unit area: [f, m]."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    corners = _slaney_hz(np.linspace(_slaney_mel(fmin), _slaney_mel(fmax), n_mels + 2))
    fb = np.stack(
        [
            np.interp(freqs, corners[i : i + 3], [0.0, 1.0, 0.0]) * 2.0 / (corners[i + 2] - corners[i])
            for i in range(n_mels)
        ],
        axis=1,
    )
    return fb, corners


def test_mel_scale_known_points():
    np.testing.assert_allclose(audio.hz_to_mel([0.0, 200.0, 1000.0, 6400.0]), [0.0, 3.0, 15.0, 42.0], atol=1e-12)
    f = np.array([0.0, 55.0, 999.0, 1000.0, 1234.5, 8000.0, 12000.0])
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "sr, n_fft, n_mels, fmax", [(24000, 1920, 80, 8000.0), (22050, 1024, 80, 8000.0), (16000, 512, 40, None)]
)
def test_mel_filterbank_matches_independent_derivation(sr, n_fft, n_mels, fmax):
    fb = audio.mel_filterbank(sr, n_fft, n_mels, 0.0, fmax)
    ref, _ = _reference_fb(sr, n_fft, n_mels, 0.0, sr / 2 if fmax is None else fmax)
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ref, rtol=1e-6, atol=1e-9)


def test_mel_filterbank_triangles_peaks_and_area():
    fb = audio.mel_filterbank(SR, N_FFT, N_MELS, 0.0, FMAX).astype(np.float64)
    df = SR / N_FFT
    freqs = np.arange(N_FFT // 2 + 1) * df
    _, corners = _reference_fb(SR, N_FFT, N_MELS, 0.0, FMAX)
    for i in range(N_MELS):
        w = fb[:, i]
        support = np.flatnonzero(w > 0)
        assert np.all(np.diff(support) == 1), f"filter {i}: support not contiguous"
        assert freqs[support[0]] > corners[i] and freqs[support[-1]] < corners[i + 2], f"filter {i}: support"
        peak = support[np.argmax(w[support])]
        d = np.diff(w[support])
        assert np.all(d[: peak - support[0]] > 0) and np.all(d[peak - support[0] :] < 0), f"filter {i}: not a triangle"
        assert abs(freqs[peak] - corners[i + 1]) <= df / 2 + 1e-9, f"filter {i}: peak at {freqs[peak]} Hz"
        height = 2.0 / (corners[i + 2] - corners[i])  # slaney normalisation: unit area in Hz
        assert w.max() <= height * (1 + 1e-6)
        # the sampled triangle's Riemann sum approximates its unit area; the worst case is the narrowest filter
        assert abs(w.sum() * df - 1.0) <= 0.0125, f"filter {i}: area {w.sum() * df}"
    assert np.all(fb[freqs > FMAX] == 0)


def _tone(freq, seconds=0.5, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_shapes_and_frame_count():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((2, 48 * HOP))).astype(np.float32)
    mel = audio.log_mel(x)
    assert mel.shape == (2, 48, N_MELS) and mel.dtype == np.float32
    assert audio.log_mel(x[0]).shape == (48, N_MELS)
    for length in (2 * HOP, 7 * HOP, 7 * HOP + 1, 8 * HOP - 1, 24001):
        expected = 1 + (length - HOP) // HOP  # = L // hop for L a multiple of hop
        assert audio.num_frames(length) == expected
        out = jax.eval_shape(audio.log_mel, jax.ShapeDtypeStruct((length,), np.float32))
        assert out.shape == (expected, N_MELS)
    assert float(audio.log_mel(np.zeros(4 * HOP, np.float32)).min()) == pytest.approx(math.log(1e-5), abs=1e-6)


@pytest.mark.parametrize("i", [3, 20, 45, 70, 79])
def test_log_mel_pure_tone_lands_in_its_mel_bin(i):
    _, corners = _reference_fb(SR, N_FFT, N_MELS, 0.0, FMAX)
    mel = np.asarray(audio.log_mel(_tone(corners[i + 1])))
    assert int(np.argmax(mel[2:-2].mean(axis=0))) == i


def test_log_mel_jit_equals_eager():
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 20 * HOP)).astype(np.float32)
    eager = np.asarray(audio.log_mel(x))
    jitted = np.asarray(jax.jit(audio.log_mel, static_argnames="config")(x, config=audio.MelConfig()))
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(audio.log_mel(x[1])), eager[1], atol=1e-5, rtol=0)


@pytest.mark.torch
def test_log_mel_matches_torch_restatement():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    t = np.arange(30 * HOP) / SR
    x = (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    y = torch.nn.functional.pad(torch.from_numpy(x)[None, None], (720, 720), mode="reflect")[:, 0]
    spec = torch.stft(y, N_FFT, hop_length=HOP, win_length=N_FFT, window=torch.hann_window(N_FFT), center=False,
                      normalized=False, onesided=True, return_complex=True)
    spec = torch.view_as_real(spec)
    mag = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)  # (1, bins, frames)
    fb, _ = _reference_fb(SR, N_FFT, N_MELS, 0.0, FMAX)
    ref = torch.log(torch.clamp(torch.from_numpy(fb.T.astype(np.float32)) @ mag, min=1e-5))[0].T.numpy()
    out = np.asarray(audio.log_mel(x))
    assert out.shape == ref.shape == (30, N_MELS)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_log_mel_rejects_bad_input():
    with pytest.raises(ValueError, match="wav"):
        audio.log_mel(np.zeros(300, np.float32))
    with pytest.raises(TypeError, match="wav"):
        audio.log_mel(np.zeros(4800, np.int16))
    with pytest.raises(TypeError, match="config"):
        audio.log_mel(np.zeros(4800, np.float32), config={"n_mels": 80})
    with pytest.raises(ValueError, match="hop <= win <= n_fft"):
        audio.MelConfig(hop=2000)
    with pytest.raises(ValueError, match="fmax"):
        audio.MelConfig(sample_rate=8000)


# --- resampling -------------------------------------------------------------------------------------------
def _fit_sine(y, freq, sr):
    """Least-squares amplitude of a sine at ``freq`` and the relative residual."""
    t = np.arange(y.size) / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef)), float(np.linalg.norm(y - basis @ coef) / np.linalg.norm(y))


@pytest.mark.parametrize(
    "sr_in, sr_out, freq",
    [(22050, 24000, 1000.0), (22050, 24000, 8000.0), (16000, 24000, 3100.0), (48000, 24000, 5000.0),
     (44100, 24000, 440.0)],
)
def test_resample_keeps_sine_frequency_and_amplitude(sr_in, sr_out, freq):
    x = _tone(freq, 1.0, sr_in, amp=0.7)
    y = audio.resample(x, sr_in, sr_out)
    edge = sr_out // 50  # skip the filter's 20 ms start-up at each end
    amp, resid = _fit_sine(y[edge:-edge], freq, sr_out)
    assert abs(amp - 0.7) <= 1e-4 * 0.7, amp
    assert resid <= 1e-4, resid


def test_resample_removes_content_above_the_new_nyquist():
    y = audio.resample(_tone(15000.0, 1.0, 48000, amp=0.7), 48000, 24000)
    assert np.sqrt(np.mean(y[500:-500] ** 2)) <= 0.7 / np.sqrt(2) * 1e-4  # >= 80 dB down


@pytest.mark.parametrize("length", [1, 99, 22050, 22051, 33333])
@pytest.mark.parametrize("sr_in, sr_out", [(22050, 24000), (48000, 24000), (24000, 16000), (8000, 24000)])
def test_resample_length_is_exact(length, sr_in, sr_out):
    y = audio.resample(np.zeros((3, length), np.float32), sr_in, sr_out)
    assert y.shape == (3, math.ceil(Fraction(length * sr_out, sr_in)))


@pytest.mark.parametrize("sr_in, sr_out", [(22050, 24000), (48000, 24000), (24000, 16000)])
@pytest.mark.parametrize("zero_crossings, beta", [(10, 5.0), (16, 10.0)])
def test_resample_matches_scipy_resample_poly(sr_in, sr_out, zero_crossings, beta):
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(3).standard_normal(5001).astype(np.float32)
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    rate = max(up, down)
    taps = signal.firwin(2 * zero_crossings * rate + 1, 1.0 / rate, window=("kaiser", beta))
    ref = signal.resample_poly(x.astype(np.float64), up, down, window=taps)
    y = audio.resample(x, sr_in, sr_out, zero_crossings=zero_crossings, beta=beta)
    np.testing.assert_allclose(y, ref, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(audio.resample(x, 24000, 24000), x)


def test_resample_rejects_bad_rates():
    with pytest.raises(ValueError, match="sr_in"):
        audio.resample(np.zeros(10), 0, 24000)
    with pytest.raises(ValueError, match="sr_out"):
        audio.resample(np.zeros(10), 24000, 24000.5)


# --- wav I/O ----------------------------------------------------------------------------------------------
def test_wav_round_trip_and_mono_mix(tmp_path):
    import soundfile as sf

    x = _tone(440.0, 0.25)
    audio.save_wav(tmp_path / "a.wav", x, SR)
    y, sr = audio.load_wav(tmp_path / "a.wav")
    assert sr == SR and y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= 1 / 32768  # 16-bit quantisation
    stereo = np.stack([x, -0.5 * x], axis=1)
    sf.write(tmp_path / "s.flac", stereo, SR, subtype="PCM_24")
    z, _ = audio.load_wav(tmp_path / "s.flac")
    assert z.shape == x.shape and np.abs(z - 0.25 * x).max() <= 1e-6


def test_load_wav_errors_and_resampling(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        audio.load_wav(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wav file")
    with pytest.raises(audio.AudioError, match="cannot read"):
        audio.load_wav(bad)
    audio.save_wav(tmp_path / "b.wav", _tone(300.0, 0.5, 22050), 22050)
    with pytest.raises(audio.AudioError, match="22050 Hz, expected 24000 Hz"):
        audio.load_wav(tmp_path / "b.wav", 24000)
    y, sr = audio.load_wav(tmp_path / "b.wav", 24000, resample_to_sr=True)
    assert sr == 24000 and y.shape == (12000,)
    with pytest.raises(ValueError, match="mono"):
        audio.save_wav(tmp_path / "c.wav", np.zeros((2, 10)), SR)


# --- no silent clipping, loudness ------------------------------------------------------------------------------
def test_save_wav_soft_limits_a_signal_that_would_clip_with_a_warning(tmp_path, caplog):
    x = _tone(440.0, 0.25, amp=1.5)  # peak ~1.5: would clip on every cycle
    peak = float(np.abs(x).max())
    with caplog.at_level("WARNING", logger="fmjax.audio"):
        audio.save_wav(tmp_path / "loud.wav", x, SR)
    assert f"peak {peak:.3f} exceeds full scale" in caplog.text and "soft-limited above 0.9" in caplog.text
    y, _ = audio.load_wav(tmp_path / "loud.wav")
    assert np.abs(y).max() < audio.LIMIT_CEILING + 1 / 32768  # never full scale (16-bit step 1/32768)
    quiet = np.abs(x) <= audio.LIMIT_KNEE
    assert np.abs(y[quiet] - x[quiet]).max() <= 1 / 32768  # below the knee: untouched up to quantisation
    order = np.argsort(x)
    assert np.all(np.diff(y[order]) >= -1 / 32768)  # monotonic: the waveform's shape is kept, not flattened
    caplog.clear()
    with caplog.at_level("WARNING", logger="fmjax.audio"):
        audio.save_wav(tmp_path / "norm.wav", x, SR, limit="normalize")
    z, _ = audio.load_wav(tmp_path / "norm.wav")
    np.testing.assert_allclose(z, x * (audio.LIMIT_CEILING / peak), atol=1 / 32768)  # one gain, 16-bit rounding
    assert f"scaled by {audio.LIMIT_CEILING / peak:.3f}" in caplog.text
    with pytest.raises(ValueError, match=f"wav: peak {peak:.3f} exceeds full scale"):
        audio.save_wav(tmp_path / "e.wav", x, SR, limit="error")
    with pytest.raises(ValueError, match="wav: expected finite samples, got 1 NaN/inf"):
        audio.save_wav(tmp_path / "n.wav", np.array([0.0, np.nan], np.float32), SR)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fmjax.audio"):
        audio.save_wav(tmp_path / "ok.wav", 0.5 * x, SR)  # within full scale: as is, no warning
    assert not caplog.text


def test_soft_limit_rule_and_loudness():
    x = np.linspace(-3, 3, 6001, dtype=np.float32)
    y = audio.soft_limit(x)
    assert np.abs(y).max() <= audio.LIMIT_CEILING < 1 and np.all(np.diff(y) >= 0)
    near = np.abs(x) < 1.2
    assert np.all(np.diff(y[near]) > 0)  # strictly increasing where float32 resolves tanh
    inside = np.abs(x) <= audio.LIMIT_KNEE
    np.testing.assert_array_equal(y[inside], x[inside])
    slope = np.gradient(y, x)[np.argmin(np.abs(x - audio.LIMIT_KNEE))]
    assert abs(slope - 1) < 0.01  # continuous slope at the knee (finite difference over 1e-3)
    sine = np.sin(2 * np.pi * np.arange(48000) / 48)  # whole periods of a full-scale sine
    level = audio.loudness(sine)
    assert abs(level["rms_dbfs"] - 20 * np.log10(np.sqrt(0.5))) < 1e-9 and abs(level["peak_dbfs"]) < 1e-9
    assert abs(audio.loudness(0.1 * sine)["rms_dbfs"] - (level["rms_dbfs"] - 20)) < 1e-9
    assert audio.loudness(np.zeros(8))["rms_dbfs"] == -np.inf
    with pytest.raises(ValueError, match="wav: expected a non-empty finite signal"):
        audio.loudness(np.array([np.inf]))
