"""STFT / iSTFT against torch semantics (torch optional) and round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import signal


@pytest.mark.parametrize("n_fft,hop,length", [(16, 4, 203), (1920, 480, 24000), (12, 5, 77)])
def test_stft_istft_round_trip(n_fft, hop, length):
    x = np.random.default_rng(0).standard_normal((2, length)).astype(np.float32)
    spec = signal.stft(x, n_fft, hop)
    assert spec.shape == (2, length // hop + 1, n_fft // 2 + 1)
    y = signal.istft(spec, n_fft, hop, length=length)
    np.testing.assert_allclose(np.asarray(y), x, atol=1e-5)  # fp32 FFT round trip
    y_jit = jax.jit(lambda s: signal.istft(s, n_fft, hop, length=length))(spec)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y), atol=1e-6)  # jit == eager


@pytest.mark.torch
@pytest.mark.parametrize("n_fft,hop", [(16, 4), (1920, 480)])
def test_stft_istft_match_torch(n_fft, hop):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 4801)).astype(np.float32)
    win = torch.hann_window(n_fft)
    ref = torch.stft(torch.from_numpy(x), n_fft, hop, n_fft, win, center=True, pad_mode="reflect",
                     return_complex=True).numpy()
    got = np.asarray(signal.stft(x, n_fft, hop))
    np.testing.assert_allclose(got, np.swapaxes(ref, -1, -2), atol=1e-5 * np.abs(ref).max())  # fp32 FFT noise, relative to the peak
    back_ref = torch.istft(torch.from_numpy(ref), n_fft, hop, n_fft, win, center=True).numpy()
    back = np.asarray(signal.istft(jnp.asarray(np.swapaxes(ref, -1, -2)), n_fft, hop))
    np.testing.assert_allclose(back, back_ref, atol=1e-5)


def test_hann_periodic_and_bad_args():
    w = signal.hann_window(16)
    np.testing.assert_allclose(w[0], 0.0)
    np.testing.assert_allclose(w[8], 1.0, atol=1e-7)
    with pytest.raises(ValueError, match="hop"):
        signal.stft(np.zeros((100,), np.float32), 16, 0)
    with pytest.raises(ValueError, match="bins"):
        signal.istft(jnp.zeros((3, 5), jnp.complex64), 16, 4)
