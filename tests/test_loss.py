"""CFM loss: CosyVoice2 parity, vmap == loop, padding invariance, CFG-dropout and prompt statistics, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from fmjax.cond import MelCond
from fmjax.loss import CFMLoss, LossDraws, per_t_bin
from fmjax.paths import CondOTPath


def _tbc(a):  # torch (B, C, T) -> fmjax [b, t, c]
    return jnp.asarray(np.swapaxes(a, 1, 2))


def test_loss_matches_cosyvoice2_compute_loss():
    f = load_fixture("cfm_loss_full.npz")
    seen = {}

    def stand_in(t, x, c):
        seen.update(t=t, x=x, cond=c)
        return _tbc(f["est_out/pred"])

    cond = MelCond(_tbc(f["in/mu"]), jnp.asarray(f["in/spks"]), _tbc(f["in/cond"]), jnp.asarray(f["in/mask"][:, 0]))
    draws = LossDraws(t=f["draw/t"].reshape(-1), z=_tbc(f["draw/z"]), keep=f["draw/cfg_rand"] > 0.2)
    loss_fn = CFMLoss(path=CondOTPath(1e-6), cfg_rate=0.2)
    loss, aux = loss_fn(stand_in, _tbc(f["in/x1"]), cond.mask, cond, draws=draws)
    tol = dict(atol=1e-6)  # the parity tolerance for the estimator inputs and the loss
    np.testing.assert_allclose(seen["x"], _tbc(f["est_in/y"]), **tol)
    np.testing.assert_allclose(seen["t"], f["est_in/t"], **tol)
    np.testing.assert_allclose(seen["cond"].mu, _tbc(f["est_in/mu"]), **tol)
    np.testing.assert_allclose(seen["cond"].spks, f["est_in/spks"], **tol)
    np.testing.assert_allclose(seen["cond"].prompt, _tbc(f["est_in/cond"]), **tol)
    np.testing.assert_allclose(seen["cond"].mask, f["est_in/mask"][:, 0], **tol)
    np.testing.assert_allclose(aux["target"], _tbc(f["aux/u_target"]), **tol)
    np.testing.assert_allclose(float(loss), float(f["out/loss"]), rtol=0, atol=1e-6)
    assert not bool(aux["keep"].all()), "the fixture drops at least one example; the test must exercise dropout"


def _setup(b=4, t=9, m=3, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    x1 = jax.random.normal(k[0], (b, t, m))
    lengths = jnp.array([t, t - 2, 5, 3][:b])
    mask = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.float32)
    cond = MelCond(jax.random.normal(k[1], (b, t, m)), jax.random.normal(k[2], (b, 5)), jnp.zeros((b, t, m)), mask)
    return x1, mask, cond


def _frame_local_model(params):
    """A per-frame estimator (no mixing across frames): padded frames cannot leak through it."""

    def velocity(t, x, c):
        h = jnp.tanh(x @ params["w"] + c.mu @ params["u"] + c.prompt @ params["p"] + t[:, None, None])
        return h + (c.spks @ params["s"])[:, None, :]

    return velocity


def _params(m=3):
    k = jax.random.split(jax.random.key(42), 4)
    return {"w": jax.random.normal(k[0], (m, m)), "u": jax.random.normal(k[1], (m, m)),
            "p": jax.random.normal(k[2], (m, m)), "s": jax.random.normal(k[3], (5, m))}


def test_vmapped_loss_equals_per_example_loop():
    x1, mask, cond = _setup()
    loss_fn = CFMLoss(cfg_rate=0.3, prompt_prob=0.5)
    params = _params()
    draws = loss_fn.draw(jax.random.key(1), x1, mask)
    loss, aux = loss_fn(_frame_local_model(params), x1, mask, cond, draws=draws)
    num = den = 0.0
    for i in range(x1.shape[0]):
        sl = lambda a: a[i : i + 1]
        c_i = jax.tree_util.tree_map(sl, cond)
        d_i = LossDraws(*[sl(v) for v in draws])
        l_i, aux_i = loss_fn(_frame_local_model(params), sl(x1), sl(mask), c_i, draws=d_i)
        np.testing.assert_allclose(aux["per_example"][i], l_i, rtol=1e-6)
        num += float(l_i) * float(mask[i].sum()) * x1.shape[-1]
        den += float(mask[i].sum()) * x1.shape[-1]
    np.testing.assert_allclose(float(loss), num / den, rtol=1e-6)


def test_padding_content_never_reaches_loss_or_gradient():
    x1, mask, cond = _setup()
    loss_fn = CFMLoss(cfg_rate=0.2, prompt_prob=1.0)
    draws = loss_fn.draw(jax.random.key(7), x1, mask)
    garbage = jax.random.normal(jax.random.key(9), x1.shape) * 1e3
    pad = (1 - mask)[..., None]
    x1_bad = x1 * mask[..., None] + garbage * pad
    draws_bad = draws._replace(z=draws.z * mask[..., None] + garbage * pad)

    def value_and_grad(x1, draws):
        f = lambda p: loss_fn(_frame_local_model(p), x1, mask, cond, draws=draws)[0]
        return jax.value_and_grad(f)(_params())

    l0, g0 = value_and_grad(x1, draws)
    l1, g1 = value_and_grad(x1_bad, draws_bad)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cfg_dropout_and_prompt_statistics_within_3_sigma():
    b, t = 4000, 20
    x1 = jnp.ones((b, t, 2))
    lengths = jnp.tile(jnp.array([20, 13, 7, 4]), b // 4)
    mask = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.float32)
    loss_fn = CFMLoss(cfg_rate=0.2, prompt_prob=0.5)
    d = loss_fn.draw(jax.random.key(0), x1, mask)
    keep = np.asarray(d.keep)
    drop_rate = 1 - keep.mean()
    assert abs(drop_rate - 0.2) < 3 * np.sqrt(0.2 * 0.8 / b)
    plen = np.asarray(d.prompt_len)
    for length in (20, 13, 7, 4):
        sel = plen[np.asarray(lengths) == length]
        hi = int(np.floor(0.3 * length))
        assert sel.max() <= hi and sel.min() >= 0
        # P(len == 0) = 0.5 + 0.5/(hi+1); each k in 1..hi has probability 0.5/(hi+1)
        p0 = 0.5 + 0.5 / (hi + 1)
        assert abs((sel == 0).mean() - p0) < 3 * np.sqrt(p0 * (1 - p0) / sel.size)
        for k in range(1, hi + 1):
            pk = 0.5 / (hi + 1)
            assert abs((sel == k).mean() - pk) < 3 * np.sqrt(pk * (1 - pk) / sel.size)


def test_dropped_examples_lose_mu_spks_prompt_but_keep_x_and_mask():
    x1, mask, cond = _setup()
    loss_fn = CFMLoss(prompt_prob=1.0)
    draws = LossDraws(t=jnp.full((4,), 0.5), z=jnp.zeros_like(x1), keep=jnp.array([True, False, True, False]),
                      prompt_len=jnp.array([2, 2, 0, 1]))
    _, aux = loss_fn(_frame_local_model(_params()), x1, mask, cond, draws=draws)
    c = aux["cond"]
    for i, kept in enumerate([True, False, True, False]):
        assert bool(jnp.any(c.mu[i] != 0)) == kept and bool(jnp.any(c.spks[i] != 0)) == kept
        np.testing.assert_array_equal(c.mask[i], mask[i])
        np.testing.assert_allclose(aux["x_t"][i], 0.5 * x1[i], atol=1e-6)  # z = 0, σ tiny
    np.testing.assert_allclose(c.prompt[0, :2], x1[0, :2], atol=0)
    assert float(jnp.abs(c.prompt[0, 2:]).max()) == 0
    assert float(jnp.abs(c.prompt[1]).max()) == 0  # dropped: prompt zeroed too


def test_loss_under_jit_equals_eager():
    x1, mask, cond = _setup()
    loss_fn = CFMLoss(cfg_rate=0.2, prompt_prob=0.5)
    vel = _frame_local_model(_params())
    eager, _ = loss_fn(vel, x1, mask, cond, jax.random.key(3))
    jitted = jax.jit(lambda x1, mask, cond, key: loss_fn(vel, x1, mask, cond, key)[0])(x1, mask, cond, jax.random.key(3))
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_per_t_bin():
    sums, counts = per_t_bin(jnp.array([0.05, 0.15, 0.16, 0.99, 1.0]), jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), 10)
    np.testing.assert_allclose(sums, [1, 5, 0, 0, 0, 0, 0, 0, 0, 9])
    np.testing.assert_allclose(counts, [1, 2, 0, 0, 0, 0, 0, 0, 0, 2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask=jnp.ones((4, 8))), "mask: expected shape"),
        (dict(mask=jnp.full((4, 9), 0.5)), "0/1"),
        (dict(mask=jnp.zeros((4, 9))), "no valid frame"),
        (dict(draws=LossDraws(z=jnp.zeros((4, 9, 2)))), "draws.z"),
        (dict(draws=LossDraws(t=jnp.zeros((3,)))), "draws.t"),
        (dict(key=None), "key"),
    ],
)
def test_loss_bad_inputs(kwargs, match):
    x1, mask, cond = _setup()
    args = dict(mask=mask, cond=cond, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CFMLoss()(_frame_local_model(_params()), x1, **args)


def test_loss_config_errors():
    with pytest.raises(ValueError, match="cfg_rate"):
        CFMLoss(cfg_rate=1.0)
    with pytest.raises(ValueError, match="prompt"):
        CFMLoss(prompt_prob=0.5)(lambda t, x, c: x, jnp.ones((2, 4, 3)), None, {"mu": jnp.ones((2, 4, 3))},
                                jax.random.key(0))
    with pytest.raises(ValueError, match="batch axis"):
        CFMLoss()(lambda t, x, c: x, jnp.ones((2, 4, 3)), None, {"mu": jnp.ones((3, 4, 3))}, jax.random.key(0))
