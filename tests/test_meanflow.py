"""MeanFlow core (fmjax.meanflow): the identity and its signs in our direction (an analytic Gaussian flow is a fixed
point, the wrong sign is not), the jvp target against finite differences, the loss at r = t is the CFM loss, the
guided target, the (t, r) sampler, the meanflow solver, bad input, and the 2-D toy: MeanFlow at 1 step beats flow
matching at 1 step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import toy
from fmjax.loss import CFMLoss, LossDraws
from fmjax.meanflow import IntervalSampler, MeanFlowDraws, MeanFlowLoss, mean_flow_target
from fmjax.paths import CondOTPath, rectified_path
from fmjax.samplers import MEANFLOW, SamplerConfig, get_solver, rk_step_cached, sample
from fmjax.timesteps import LogitNormal, Uniform, linear_grid

# An analytic flow: N(0, I) noise -> N(MU, S^2 I) data on the rectified path. Its marginal flow map from t to r is
# x_r = r·MU + (sigma_r / sigma_t)·(x − t·MU), sigma_t^2 = (1 − t)^2 + t^2 S^2, so the average velocity over [t, r] is
# known in closed form, and so is the instantaneous velocity v(x, t).
MU, S = jnp.array([2.0, -1.0]), 0.5


def _sigma(t):
    return jnp.sqrt((1 - t) ** 2 + t**2 * S**2)


def _v(x, t):
    dsigma = (-(1 - t) + t * S**2) / _sigma(t)
    return MU + (dsigma / _sigma(t))[:, None] * (x - t[:, None] * MU)


def _u(t, x, cond, r):
    x_r = r[:, None] * MU + (_sigma(r) / _sigma(t))[:, None] * (x - t[:, None] * MU)
    return (x_r - x) / (r - t)[:, None]


T = jnp.array([0.1, 0.2, 0.3, 0.5, 0.7])
R = jnp.array([0.4, 0.9, 1.0, 0.6, 0.95])


def test_identity_fixed_point_and_signs_on_an_analytic_flow():
    """The exact average velocity satisfies u = v − (t − r)·du/dt (target == u to float32 rounding: 1e-5 on values
    of size ~4); flipping the sign of (t − r) or of the t tangent breaks it by O(1), so the test sees a sign error."""
    x = jax.random.normal(jax.random.key(0), (5, 2))
    u, target = mean_flow_target(_u, x, None, T, R, _v(x, T))
    np.testing.assert_allclose(target, u, atol=1e-5)  # fp32 rounding of a closed form
    _, dudt = jax.jvp(lambda x_, r_, t_: _u(t_, x_, None, r_), (x, R, T), (_v(x, T), jnp.zeros(5), jnp.ones(5)))
    wrong = _v(x, T) + (T - R)[:, None] * dudt  # the sign of the paper's identity read in the wrong direction
    assert float(jnp.abs(wrong - u).max()) > 0.1


def test_meanflow_solver_one_step_is_the_flow_map():
    """With the exact u, one meanflow step from 0 to 1 lands on the flow map x1 = MU + S·z, and 2 or 3 steps on any
    grid give the same (1e-5, fp32); the solver passes r = the step's end to the closure."""
    z = jax.random.normal(jax.random.key(1), (64, 2))
    exact = MU + S * z
    for grid in (linear_grid(1), linear_grid(2), np.array([0.0, 0.2, 0.7, 1.0])):
        x1, aux = sample(_u, z, None, grid, MEANFLOW)
        np.testing.assert_allclose(x1, exact, atol=1e-5)
        assert aux.nfe == len(grid) - 1
    seen = []

    def cached(t, x, cond, cache, r):
        seen.append((float(t[0]), float(r[0])))
        return _u(t, x, cond, r), cache + 1

    x, caches = rk_step_cached(MEANFLOW, cached, jnp.float32(0.25), jnp.float32(0.5), z, None, jnp.zeros((1, 3)))
    assert seen == [(0.25, 0.75)] and caches.tolist() == [[1.0, 1.0, 1.0]]
    assert SamplerConfig("linear", 2, "meanflow", 0.0).nfe == 2 and get_solver("meanflow") is MEANFLOW


def _random_toy(key=0):
    """A MeanFlow toy MLP with random params, its interval projection randomised too (so r matters)."""
    model = toy.ToyMLP(hidden=32, depth=2, mean_flow=True)
    params = model.init(jax.random.key(key), jnp.zeros((1,)), jnp.zeros((1, 2)))
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jax.random.normal(jax.random.key(7), a.shape) if "interval" in jax.tree_util.keystr(p) else a,
        params)
    return model, params


def test_target_equals_finite_difference_of_the_total_derivative():
    """jvp target vs v − (t − r)·[u(x + h v, r, t + h) − u(x − h v, r, t − h)] / 2h in float64 (h = 1e-5: the
    central difference errs by ~h²·u'''/6 ~ 1e-10·(100 rad)^3 / 6 ~ 2e-5 for the toy's highest time frequency,
    rounding by ~1e-16/h): agreement to 1e-3, the issue's tolerance, with margin."""
    with jax.enable_x64(True):
        model, params = _random_toy()
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        velocity = toy.toy_velocity(model, params)
        k1, k2 = jax.random.split(jax.random.key(3))
        x, v = jax.random.normal(k1, (6, 2), jnp.float64), jax.random.normal(k2, (6, 2), jnp.float64)
        t = jnp.array([0.05, 0.2, 0.4, 0.5, 0.6, 0.8])
        r = jnp.array([0.3, 0.2, 0.9, 1.0, 0.7, 0.95])  # one row with r = t
        _, target = mean_flow_target(velocity, x, None, t, r, v)
        h = 1e-5
        fd = (velocity(t + h, x + h * v, None, r=r) - velocity(t - h, x - h * v, None, r=r)) / (2 * h)
        expected = v - (t - r)[:, None] * fd
        np.testing.assert_allclose(np.asarray(target), np.asarray(expected), atol=1e-3)
        assert float(jnp.abs(fd).max()) > 0.1  # the derivative term is not trivially zero


def test_loss_at_r_equal_t_is_the_cfm_loss():
    """r = t, no guidance, no adaptive weight: the MeanFlow loss equals CFMLoss on the same draws (1e-6 absolute on
    values ~1: the same sums in fp32; only x·0 terms differ) -- also with class conditions dropped by CFG."""
    model, params = _random_toy()
    velocity = toy.toy_velocity(model, params)
    k = jax.random.split(jax.random.key(5), 3)
    x1, z = jax.random.normal(k[0], (16, 2)), jax.random.normal(k[1], (16, 2))
    t = jax.random.uniform(k[2], (16,))
    keep = jnp.arange(16) % 3 != 0
    model_c = toy.ToyMLP(hidden=32, depth=2, mean_flow=True, num_classes=3)
    params_c = model_c.init(jax.random.key(1), jnp.zeros((1,)), jnp.zeros((1, 2)), jnp.zeros((1, 3)))
    cond = toy.one_hot(jnp.arange(16) % 3, 3)
    for vel, c in ((velocity, None), (toy.toy_velocity(model_c, params_c), cond)):
        mf = MeanFlowLoss(path=CondOTPath(1e-4), adaptive_p=0.0, cfg_rate=0.2)
        got, aux = mf(vel, x1, None, c, draws=MeanFlowDraws(t=t, r=t, z=z, keep=keep))
        ref, _ = CFMLoss(path=CondOTPath(1e-4), cfg_rate=0.2)(lambda t_, x_, c_: vel(t_, x_, c_), x1, None, c,
                                                              draws=LossDraws(t=t, z=z, keep=keep))
        assert abs(float(got) - float(ref)) < 1e-6, (float(got), float(ref))
        np.testing.assert_allclose(aux["target"], x1 - (1 - 1e-4) * z, atol=1e-6)  # target = v at r = t


def test_guided_target_and_adaptive_weight():
    """The guided field ω·v + κ·u(c) + (1 − ω − κ)·u(∅) on kept rows, v on dropped rows (at r = t the target is
    that field; 1e-5 fp32); the adaptive weight is (e + c)^-p of the per-example error; w = ω/(1 − κ) − 1."""
    model = toy.ToyMLP(hidden=32, depth=2, mean_flow=True, num_classes=2)
    params = model.init(jax.random.key(2), jnp.zeros((1,)), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    velocity = toy.toy_velocity(model, params)
    k = jax.random.split(jax.random.key(6), 3)
    x1, z, t = jax.random.normal(k[0], (8, 2)), jax.random.normal(k[1], (8, 2)), jax.random.uniform(k[2], (8,))
    cond, keep = toy.one_hot(jnp.arange(8) % 2, 2), jnp.arange(8) >= 2
    loss = MeanFlowLoss(path=rectified_path(), cfg_rate=0.1, cfg_scale=0.85, cfg_mix=0.5, adaptive_p=1.0,
                        adaptive_c=1e-2)
    assert abs(loss.guidance_weight() - 0.7) < 1e-12
    value, aux = loss(velocity, x1, None, cond, draws=MeanFlowDraws(t=t, r=t, z=z, keep=keep))
    v = x1 - z
    x_t = (1 - t)[:, None] * z + t[:, None] * x1
    c_used = jnp.where(keep[:, None], cond, 0.0)
    u_c, u_u = velocity(t, x_t, c_used, r=t), velocity(t, x_t, jnp.zeros_like(cond), r=t)
    field = jnp.where(keep[:, None], 0.85 * v + 0.5 * u_c + (1 - 0.85 - 0.5) * u_u, v)
    np.testing.assert_allclose(aux["target"], field, atol=1e-5)
    e = jnp.mean((u_c - field) ** 2, axis=-1)
    np.testing.assert_allclose(aux["weight"], 1 / (e + 1e-2), rtol=1e-4)
    np.testing.assert_allclose(value, jnp.sum(aux["weight"] * e * 2) / 16, rtol=1e-5)


def test_interval_sampler():
    """t <= r in [0, 1]; the share of rows with r != t is neq_ratio (4096 draws: ±3 std of a binomial = ±0.02)."""
    t, r = IntervalSampler(LogitNormal(0.4, 1.0), 0.25)(jax.random.key(0), 4096)
    assert bool(jnp.all((0 <= t) & (t <= r) & (r <= 1)))
    assert abs(float(jnp.mean(r > t)) - 0.25) < 0.02
    t, r = IntervalSampler(Uniform(), 0.0)(jax.random.key(1), 64)
    assert bool(jnp.all(r == t))


def test_bad_input_names_the_argument():
    model, params = _random_toy()
    velocity = toy.toy_velocity(model, params)
    x1 = jnp.ones((4, 2))
    t = jnp.array([0.1, 0.5, 0.6, 0.2])
    with pytest.raises(ValueError, match=r"draws\.r: expected interval ends r >= t .* rows \[1\]"):
        MeanFlowLoss()(velocity, x1, draws=MeanFlowDraws(t=t, r=jnp.array([0.2, 0.4, 0.6, 0.3]), z=x1))
    with pytest.raises(ValueError, match=r"draws\.r"):
        MeanFlowLoss()(velocity, x1, draws=MeanFlowDraws(t=t, r=t + 1.0, z=x1))
    with pytest.raises(ValueError, match=r"key: a PRNG key is needed to draw \['r'\]"):
        MeanFlowLoss()(velocity, x1, draws=MeanFlowDraws(t=t, z=x1))
    with pytest.raises(ValueError, match="cfg_rate: guidance folded into training"):
        MeanFlowLoss(cfg_scale=2.0)
    with pytest.raises(ValueError, match="cfg_mix"):
        MeanFlowLoss(cfg_mix=1.0, cfg_rate=0.1)
    with pytest.raises(ValueError, match="neq_ratio"):
        IntervalSampler(neq_ratio=1.5)
    with pytest.raises(ValueError, match="n_steps: expected an int >= 1, got 0"):  # NFE 0
        SamplerConfig("linear", 0, "meanflow", 0.0)
    with pytest.raises(ValueError, match="r: this ToyMLP is a plain flow"):
        toy.ToyMLP().apply(toy.ToyMLP().init(jax.random.key(0), t, x1), t, x1, None, t)


def test_toy_meanflow_one_step_beats_flow_matching_one_step():
    """N(0, I) -> moons. Flow matching (1000 steps) at 1 Euler step blurs the two moons into their mean (sliced W2
    ~1.0); MeanFlow fine-tuned from it (1500 steps, r ≠ t for half the rows, adaptive weight p = 1) at 1 step gets
    within reach of the flow's 64-step samples. Margin: MeanFlow at 1 step <= 0.6 x flow matching at 1 step (seeds
    fixed; measured 0.38 vs 1.02, ratio 0.37). Ceilings printed with it: the flow at 64 steps (0.13) and two data
    draws (0.055)."""
    key = jax.random.key(0)
    fm = toy.fit_toy_flow(key, "normal", "moons", steps=1000)
    start = toy.ToyMLP(mean_flow=True).init(jax.random.key(3), jnp.zeros((1,)), jnp.zeros((1, 2)))
    start = {"params": {**start["params"], **fm.params["params"]}}  # the flow + a zero interval projection
    mf = toy.fit_toy_mean_flow(key, "normal", "moons", steps=1500, lr=1e-3, params=start,
                               loss=MeanFlowLoss(path=rectified_path(), intervals=IntervalSampler(Uniform(), 0.5)))
    ref = toy.two_moons(jax.random.key(9), 2000)

    def sw(fit, n, solver):
        _, x = toy.sample_toy(fit, jax.random.key(1), "normal", 2000, linear_grid(n), solver)
        return float(toy.sliced_wasserstein(jax.random.key(5), x, ref))

    fm1, mf1, fm64 = sw(fm, 1, "euler"), sw(mf, 1, MEANFLOW), sw(fm, 64, "euler")
    floor = float(toy.sliced_wasserstein(jax.random.key(5), toy.two_moons(jax.random.key(3), 2000), ref))
    print(f"sliced W2: flow 1 step {fm1:.3f}, MeanFlow 1 step {mf1:.3f}, flow 64 steps {fm64:.3f}, data {floor:.3f}")
    assert mf1 <= 0.6 * fm1, (mf1, fm1)
    assert fm64 < mf1  # the student is not better than the well-integrated flow: the metric is not saturated
