"""Sampler-level streaming on a toy causal estimator: chunked ODE == offline ODE (any solver, CFG)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import samplers as S
from fmjax.streaming import cache_nbytes, init_sampler_caches, sample_chunk, take_frames
from fmjax.timesteps import cosine_grid

M = 4
W = jax.random.normal(jax.random.key(0), (3, M, M)) * 0.5


def offline_velocity(t, x, cond):
    """Causal toy estimator: a k=3 causal conv plus the running mean of all past frames."""
    xp = jnp.pad(x, ((0, 0), (2, 0), (0, 0)))
    conv = xp[:, :-2] @ W[0] + xp[:, 1:-1] @ W[1] + xp[:, 2:] @ W[2]
    run_mean = jnp.cumsum(x, 1) / jnp.arange(1, x.shape[1] + 1)[None, :, None]
    return jnp.tanh(conv + t[:, None, None]) + 0.5 * run_mean + cond


def init_cache(b):
    return (jnp.zeros((b, 2, M)), jnp.zeros((b, M)), jnp.zeros((b,)))


def streaming_velocity(t, x, cond, cache):
    hist, total, count = cache
    full = jnp.concatenate([hist, x], 1)
    conv = full[:, :-2] @ W[0] + full[:, 1:-1] @ W[1] + full[:, 2:] @ W[2]
    csum = total[:, None] + jnp.cumsum(x, 1)
    cnt = count[:, None, None] + jnp.arange(1, x.shape[1] + 1)[None, :, None]
    v = jnp.tanh(conv + t[:, None, None]) + 0.5 * csum / cnt + cond
    return v, (full[:, -2:], csum[:, -1], count + x.shape[1])


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("chunk", [1, 3, 11])
@pytest.mark.parametrize("cfg", [0.0, 0.7])
def test_streamed_sampling_equals_offline(solver, chunk, cfg):
    b, T, n = 2, 11, 5
    noise = jax.random.normal(jax.random.key(1), (b, T, M))
    cond = jax.random.normal(jax.random.key(2), (b, T, M))
    grid = cosine_grid(n)
    off_v = S.classifier_free_guidance(offline_velocity, cfg) if cfg else offline_velocity
    st_v = S.classifier_free_guidance_cached(streaming_velocity, cfg) if cfg else streaming_velocity
    offline, _ = S.sample(off_v, noise, cond, grid, solver)
    caches = init_sampler_caches(init_cache(2 * b if cfg else b), n, solver)
    step = jax.jit(lambda x0, c, caches: sample_chunk(st_v, x0, c, grid, caches, solver))
    outs = []
    for s in range(0, T, chunk):
        x, caches = step(noise[:, s : s + chunk], cond[:, s : s + chunk], caches)
        outs.append(x)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), offline, atol=1e-5)  # fp32 streaming parity


def test_caches_are_per_step_and_stage_and_constant_size():
    caches = init_sampler_caches(init_cache(3), 4, "heun")
    assert all(leaf.shape[:2] == (4, 2) for leaf in jax.tree_util.tree_leaves(caches))
    n0 = cache_nbytes(caches)
    x, caches = sample_chunk(streaming_velocity, jnp.ones((3, 2, M)), jnp.zeros((3, 2, M)), cosine_grid(4), caches, "heun")
    assert cache_nbytes(caches) == n0
    with pytest.raises(ValueError, match="leading axes"):
        sample_chunk(streaming_velocity, x, jnp.zeros((3, 2, M)), cosine_grid(5), caches, "heun")


def test_take_frames_uses_absolute_index():
    noise = jnp.arange(20.0).reshape(10, 2)
    got = jax.jit(lambda s: take_frames(noise, s, 3))(jnp.int32(4))
    np.testing.assert_array_equal(got, noise[4:7])
