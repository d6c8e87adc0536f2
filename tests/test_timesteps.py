"""Training t-samplers (statistics) and inference grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fmjax import timesteps as ts

N = 20000


@pytest.mark.parametrize("sampler", [ts.Uniform(), ts.CosineWarp(), ts.LogitNormal(0.5, 1.2), ts.ModeSampling(1.0)])
def test_t_samplers_match_their_distribution(sampler):
    t = np.asarray(sampler(jax.random.key(0), N))
    assert t.shape == (N,) and t.min() >= 0 and t.max() <= 1
    # Kolmogorov-Smirnov against the analytic CDF, computed independently of the code's transform.
    if isinstance(sampler, ts.Uniform):
        cdf = lambda x: x
    elif isinstance(sampler, ts.CosineWarp):
        cdf = lambda x: 2 / np.pi * np.arccos(1 - x)
    elif isinstance(sampler, ts.LogitNormal):
        cdf = lambda x: stats.norm.cdf((np.log(x / (1 - x)) - 0.5) / 1.2)
    else:  # mode sampling: invert t(u) numerically from its definition
        u = np.linspace(0, 1, 100001)
        tu = 1 - u - 1.0 * (np.cos(np.pi / 2 * u) ** 2 - 1 + u)
        order = np.argsort(tu)
        cdf = lambda x: np.interp(x, tu[order], 1 - u[order])  # t decreasing in u -> P(T<=x) = 1 - u(x)
    assert stats.kstest(t, cdf).pvalue > 1e-3


def test_stratified_puts_one_draw_per_bin_and_is_shuffled():
    b = 16
    u = np.asarray(ts.Uniform(stratified=True)(jax.random.key(3), b))
    np.testing.assert_array_equal(np.sort(np.floor(u * b)), np.arange(b))
    assert not np.all(np.diff(u) > 0)  # shuffled
    t = np.asarray(ts.CosineWarp(stratified=True)(jax.random.key(3), b))
    u_back = 2 / np.pi * np.arccos(1 - t)
    np.testing.assert_array_equal(np.sort(np.floor(u_back * b + 1e-6)), np.arange(b))


def test_stratified_mean_has_lower_variance():
    keys = jax.random.split(jax.random.key(0), 400)
    m_iid = np.array([float(jnp.mean(ts.Uniform()(k, 8))) for k in keys[:200]])
    m_str = np.array([float(jnp.mean(ts.Uniform(stratified=True)(k, 8))) for k in keys[200:]])
    assert m_str.var() < 0.2 * m_iid.var()


def test_grids():
    np.testing.assert_allclose(ts.linear_grid(4), [0, 0.25, 0.5, 0.75, 1.0], atol=1e-7)
    np.testing.assert_allclose(ts.cosine_grid(10), 1 - np.cos(np.linspace(0, 1, 11) * np.pi / 2), atol=1e-7)
    np.testing.assert_allclose(ts.sway_grid(10, -1.0), ts.cosine_grid(10), atol=1e-7)  # sway(s=-1) == cosine
    np.testing.assert_allclose(ts.sway_grid(10, 0.0), ts.linear_grid(10), atol=1e-7)
    g = ts.time_grid([0.0, 0.2, 1.0])
    np.testing.assert_allclose(g, [0.0, 0.2, 1.0])
    for kind in ("linear", "cosine", "sway"):
        grid = ts.time_grid(kind, 7)
        assert grid.shape == (8,) and grid[0] == 0 and abs(grid[-1] - 1) < 1e-6 and np.all(np.diff(grid) > 0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ts.time_grid("quadratic", 4), "linear"),
        (lambda: ts.time_grid("cosine", 0), "n:"),
        (lambda: ts.time_grid("cosine"), "n:"),
        (lambda: ts.validate_grid([0.0, 0.5, 0.4, 1.0]), "increasing"),
        (lambda: ts.validate_grid([0.0, 1.2]), "within"),
        (lambda: ts.validate_grid([0.5]), "NFE"),
        (lambda: ts.get_t_sampler("beta"), "logit_normal"),
        (lambda: ts.LogitNormal(0.0, -1.0), "s:"),
        (lambda: ts.Uniform()(jax.random.key(0), 0), "batch"),
    ],
)
def test_bad_schedule_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
