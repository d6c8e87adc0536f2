"""Solvers: convergence order, scan vs loop, jit vs eager, CFG, compilation count, cached stepping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import samplers as S
from fmjax.cond import MelCond
from fmjax.timesteps import cosine_grid, linear_grid

ORDER_BANDS = {"euler": (0.9, 1.1), "midpoint": (1.9, 2.1), "heun": (1.9, 2.1), "rk4": (3.8, 4.2)}


@pytest.mark.parametrize("name", sorted(ORDER_BANDS))
def test_solver_convergence_order(name):
    """On y' = a·y (float64), log error vs log step has slope ≈ the solver's order (band stated above)."""
    a = -1.3
    with jax.enable_x64(True):
        velocity = lambda t, x, c: a * x
        ns = np.array([8, 16, 32, 64])
        errs = []
        for n in ns:
            y1, aux = S.sample(velocity, jnp.ones((1, 1), jnp.float64), None, np.linspace(0, 1, n + 1), name)
            errs.append(abs(float(y1[0, 0]) - np.exp(a)))
            assert aux.nfe == n * S.get_solver(name).stages
    slope = np.polyfit(np.log(1.0 / ns), np.log(errs), 1)[0]  # d log(err) / d log(step)
    lo, hi = ORDER_BANDS[name]
    assert lo <= slope <= hi, f"{name}: fitted order {slope:.3f} outside [{lo}, {hi}]"
    assert S.get_solver(name).order == round(slope)


def _velocity(t, x, c):
    return jnp.sin(3 * t)[:, None, None] * x + jnp.cos(x) * c["w"][:, None, :]


@pytest.mark.parametrize("name", sorted(S.SOLVERS))
def test_scan_equals_python_loop_and_jit_equals_eager(name):
    k = jax.random.key(0)
    x0 = jax.random.normal(k, (3, 5, 4))
    cond = {"w": jnp.arange(12.0).reshape(3, 4) / 10}
    grid = cosine_grid(6)
    x_scan, aux = S.sample(_velocity, x0, cond, grid, name, return_trajectory=True)
    solver = S.get_solver(name)
    x = x0
    for i in range(len(grid) - 1):
        x = S.rk_step(solver, _velocity, jnp.float32(grid[i]), jnp.float32(grid[i + 1] - grid[i]), x, cond)
        np.testing.assert_allclose(aux.trajectory[i], x, atol=1e-6)  # fp32 scan vs loop
    np.testing.assert_allclose(x_scan, x, atol=1e-6)
    x_jit, _ = jax.jit(lambda x0, g: S.sample(_velocity, x0, cond, g, name))(x0, grid)
    np.testing.assert_allclose(x_jit, x_scan, atol=1e-5)  # jit == eager


def test_new_grid_values_do_not_recompile():
    traces = []

    def run(x0, grid):
        traces.append(1)
        return S.sample(_velocity, x0, {"w": jnp.ones((2, 4))}, grid, "heun")[0]

    f = jax.jit(run)
    x0 = jnp.ones((2, 3, 4))
    outs = [f(x0, jnp.asarray(g)) for g in (linear_grid(8), cosine_grid(8), np.sort(np.r_[0, np.random.rand(7), 1]))]
    assert len(traces) == 1 and f._cache_size() == 1
    assert not np.allclose(outs[0], outs[1])  # the grid values did change the result


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("w", [0.7, 2.0])
def test_cfg_batch_doubling_equals_two_calls(b, w):
    k1, k2, k3 = jax.random.split(jax.random.key(b), 3)
    x = jax.random.normal(k1, (b, 6, 4))
    cond = MelCond(jax.random.normal(k2, (b, 6, 4)), jax.random.normal(k3, (b, 3)), jnp.ones((b, 6, 4)), jnp.ones((b, 6)))
    calls = []

    def velocity(t, x, c):
        calls.append(x.shape[0])
        return t[:, None, None] * x + c.mu * c.mask[..., None] + c.spks.sum(-1)[:, None, None] + c.prompt

    t = jnp.full((b,), 0.4)
    v_batch = S.classifier_free_guidance(velocity, w, mode="batch")(t, x, cond)
    v_two = S.classifier_free_guidance(velocity, w, mode="two_calls")(t, x, cond)
    assert calls == [2 * b, b, b]
    np.testing.assert_allclose(v_batch, v_two, atol=1e-6)
    v_c, v_u = velocity(t, x, cond), velocity(t, x, cond.null())
    np.testing.assert_allclose(v_batch, v_c + w * (v_c - v_u), atol=1e-5)  # the F5 form of the same rule


def test_cached_step_equals_plain_step_for_a_stateless_velocity():
    calls = []

    def vel_cached(t, x, c, cache):
        calls.append(1)
        return _velocity(t, x, c), cache + 1

    x0 = jnp.ones((2, 3, 4))
    cond = {"w": jnp.ones((2, 4))}
    for name in S.SOLVERS:
        solver = S.get_solver(name)
        caches = jnp.zeros((solver.stages, 5))
        x_c, new = S.rk_step_cached(solver, vel_cached, 0.2, 0.1, x0, cond, caches)
        x_p = S.rk_step(solver, _velocity, 0.2, 0.1, x0, cond)
        np.testing.assert_allclose(x_c, x_p, atol=1e-7)
        np.testing.assert_array_equal(new, np.ones((solver.stages, 5)))  # every stage wrote its own slice


def test_sampler_errors():
    with pytest.raises(ValueError, match="rk4"):
        S.sample(_velocity, jnp.ones((1, 2, 4)), None, linear_grid(2), "dopri5")
    with pytest.raises(ValueError, match="increasing"):
        S.sample(_velocity, jnp.ones((1, 2, 4)), None, [0.0, 0.6, 0.5, 1.0])
    with pytest.raises(ValueError, match="NFE"):
        S.sample(_velocity, jnp.ones((1, 2, 4)), None, [0.0])
    with pytest.raises(ValueError, match="mode"):
        S.classifier_free_guidance(_velocity, 0.7, mode="sequential")
