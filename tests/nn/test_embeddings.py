"""Time embedding: torch formula parity, shapes, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn.embeddings import TimestepEmbedding, sinusoidal_embedding


@pytest.mark.torch
@pytest.mark.parametrize("dim", [320, 256])
def test_sinusoidal_embedding_matches_torch(dim):
    torch = pytest.importorskip("torch")
    t = np.array([0.0, 0.013, 0.3, 0.75, 1.0], np.float32)
    half = dim // 2
    freq = torch.exp(torch.arange(half).float() * -(math.log(10000) / (half - 1)))
    arg = 1000 * torch.from_numpy(t)[:, None] * freq[None]
    expected = torch.cat([arg.sin(), arg.cos()], dim=-1).numpy()
    got = np.asarray(sinusoidal_embedding(jnp.asarray(t), dim))
    assert got.shape == (5, dim)
    # The bound follows from float32 arithmetic, not from one CPU: torch's float32 exp may return a frequency one
    # ulp from the correctly rounded one we use (relative 2^-23 at most, i.e. < 2 ulps of the argument after
    # multiplying), and each side rounds its product (1/2 ulp each), so the arguments -- up to 1000 rad, where an
    # ulp is 6.1e-5 -- differ by < 3 ulps; sin/cos are 1-Lipschitz, and each library's float32 sin/cos rounds by
    # at most one ulp of the result (< 2^-24 each for |y| < 1). Bound per element: 3 ulp(arg) + 2^-23.
    bound = 3 * np.spacing(np.abs(np.concatenate([arg.numpy()] * 2, axis=-1))) + 2.0**-23
    err = np.abs(got - expected)
    assert np.all(err <= bound), f"{int((err > bound).sum())} of {err.size} beyond, worst {np.max(err / bound):.2f}x"
    assert err[:, :1].max() <= 2.0**-23 and err[0].max() <= 2.0**-23  # frequency 1 and t = 0: exact arguments


def test_sinusoidal_embedding_matches_float64_formula():
    t = np.array([0.25, 0.9], np.float64)
    dim = 64
    freq = np.exp(-np.arange(32) * math.log(10000) / 31)
    arg = 1000 * t[:, None] * freq
    expected = np.concatenate([np.sin(arg), np.cos(arg)], -1)
    # float32 arguments reach 900 rad: their rounding (~3e-5) bounds the agreement
    np.testing.assert_allclose(np.asarray(sinusoidal_embedding(jnp.asarray(t, jnp.float32), dim)), expected, atol=2e-4)


def test_sinusoidal_embedding_bad_input():
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(jnp.zeros(2), 7)
    with pytest.raises(ValueError, match="t"):
        sinusoidal_embedding(jnp.zeros((2, 3)), 8)


def test_timestep_embedding_is_linear_silu_linear():
    mod = TimestepEmbedding(16, out_dim=12)
    feats = jax.random.normal(jax.random.key(0), (3, 8))
    params = mod.init(jax.random.key(1), feats)
    p = params["params"]
    h = feats @ p["linear_1"]["kernel"] + p["linear_1"]["bias"]
    h = h / (1 + jnp.exp(-h))
    expected = h @ p["linear_2"]["kernel"] + p["linear_2"]["bias"]
    out = mod.apply(params, feats)
    assert out.shape == (3, 12)
    np.testing.assert_allclose(out, expected, atol=1e-5)
