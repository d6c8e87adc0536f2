"""The torch-free re-statement of CosyVoice's fixed noise."""

import numpy as np
import pytest

from conftest import load_fixture
from fmjax.noise import MAX_FRAMES, cosyvoice_noise, torch_randn_cpu


def test_fixed_noise_matches_recorded_first_600_frames():
    ref = load_fixture("rand_noise_first600.npz")["rand_noise"][0].T  # (80, 600) -> [600, 80]
    got = cosyvoice_noise(600)
    # torch uses SLEEF's 1-ulp log/sin/cos, numpy libm's (<= 1 ulp); z = sqrt(-2 log(1 - u)) * cos(theta) with the
    # same float32 theta: <= 1 ulp from log (halved by the sqrt), 1 from sqrt, 1 from cos, 0.5 from the product ->
    # at most 4 ulp of |z| (measured: 3). Bound per entry, in units of float32 spacing at |ref|.
    ulps = np.abs(got.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32))
    assert ulps.max() <= 4, f"max error {ulps.max()} ulp (bound 4)"
    assert (got == ref).mean() > 0.5  # most values are bit-exact
    np.testing.assert_array_equal(cosyvoice_noise(10, offset=590), got[590:600])


@pytest.mark.torch
def test_matches_torch_randn_in_full():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = torch.randn(1, 80, MAX_FRAMES).numpy()
    np.testing.assert_allclose(torch_randn_cpu(0, (1, 80, MAX_FRAMES)), ref, rtol=0, atol=1e-6)
    torch.manual_seed(123)
    np.testing.assert_allclose(torch_randn_cpu(123, (4, 32)), torch.randn(4, 32).numpy(), rtol=0, atol=1e-6)


def test_noise_bounds():
    with pytest.raises(ValueError, match="15000"):
        cosyvoice_noise(10, offset=MAX_FRAMES - 5)
    with pytest.raises(ValueError, match="multiples of 16"):
        torch_randn_cpu(0, (3, 5))
