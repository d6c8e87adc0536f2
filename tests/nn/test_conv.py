"""Conv1d / ConvTranspose1d vs torch; causal conv streaming == offline, causality, bad cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn.conv import CausalConv1d, Conv1d, ConvCache, ConvTranspose1d


def _rand(key, shape):
    """Standard-normal test inputs from numpy (an eager ``jax.random.normal`` compiles a program per shape)."""
    return jnp.asarray(np.random.default_rng(key).standard_normal(shape), jnp.float32)


@pytest.mark.torch
@pytest.mark.parametrize(
    "k,stride,padding,dilation,groups",
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 1, (4, 0), 2, 1), (4, 1, 0, 1, 2), (1, 1, 0, 1, 1)],
)
def test_conv1d_matches_torch(k, stride, padding, dilation, groups):
    torch = pytest.importorskip("torch")
    x = _rand(0, (2, 11, 6))
    mod = Conv1d(8, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    params = mod.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    w = torch.from_numpy(np.asarray(params["params"]["kernel"]).transpose(2, 1, 0).copy())
    b = torch.tensor(np.asarray(params["params"]["bias"]))
    xt = torch.from_numpy(np.asarray(x).transpose(0, 2, 1).copy())
    if isinstance(padding, tuple):
        xt = torch.nn.functional.pad(xt, padding)
        padding = 0
    ref = torch.nn.functional.conv1d(xt, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = mod.apply(params, x)
    assert out.shape == (2, ref.shape[2], 8)
    np.testing.assert_allclose(np.asarray(out), ref.numpy().transpose(0, 2, 1), atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("k,stride,padding,output_padding", [(4, 2, 1, 0), (3, 2, 1, 1), (5, 3, 0, 0)])
def test_conv_transpose1d_matches_torch(k, stride, padding, output_padding):
    torch = pytest.importorskip("torch")
    x = _rand(0, (2, 9, 6))
    mod = ConvTranspose1d(5, k, stride=stride, padding=padding, output_padding=output_padding)
    params = mod.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    w = torch.from_numpy(np.asarray(params["params"]["kernel"]).transpose(1, 2, 0).copy())  # (in, out, k)
    b = torch.tensor(np.asarray(params["params"]["bias"]))
    xt = torch.from_numpy(np.asarray(x).transpose(0, 2, 1).copy())
    ref = torch.nn.functional.conv_transpose1d(xt, w, b, stride=stride, padding=padding, output_padding=output_padding)
    out = mod.apply(params, x)
    assert out.shape == (2, ref.shape[2], 5)
    np.testing.assert_allclose(np.asarray(out), ref.numpy().transpose(0, 2, 1), atol=1e-5)


@pytest.mark.parametrize("k,dilation,groups", [(3, 1, 1), (5, 2, 2), (31, 1, 4)])
def test_causal_conv_offline_is_left_padded_conv(k, dilation, groups):
    x = _rand(0, (2, 13, 8))
    mod = CausalConv1d(8, k, dilation=dilation, groups=groups)
    params = mod.init(jax.random.key(1), x)
    y, cache = mod.apply(params, x)
    assert cache is None
    plain = Conv1d(8, k, padding=(dilation * (k - 1), 0), dilation=dilation, groups=groups)
    np.testing.assert_allclose(y, plain.apply(params, x), atol=1e-6)


@pytest.mark.parametrize("k,dilation,groups", [(3, 1, 1), (5, 2, 2), (31, 1, 4)])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_causal_conv_streaming_equals_offline(k, dilation, groups, chunk):
    x = _rand(0, (2, 17, 8))
    mod = CausalConv1d(12, k, dilation=dilation, groups=groups)
    params = mod.init(jax.random.key(1), x)
    ref, _ = mod.apply(params, x)
    cache = mod.init_cache(2, 8)
    assert cache.history.shape == (2, dilation * (k - 1), 8)
    outs = []
    for s in range(0, 17, chunk):
        y, cache = mod.apply(params, x[:, s : s + chunk], cache)
        assert cache.history.shape == (2, dilation * (k - 1), 8)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), ref, rtol=0, atol=1e-5)


def test_causal_conv_gradient_never_reaches_the_past():
    x = _rand(0, (1, 10, 4))
    mod = CausalConv1d(3, 3)
    params = mod.init(jax.random.key(1), x)
    grad = jax.grad(lambda x: mod.apply(params, x)[0][0, 4].sum())(x)
    assert np.all(np.asarray(grad[0, 5:]) == 0.0)
    assert np.all(np.abs(np.asarray(grad[0, 2:5])).sum(-1) > 0)


def test_causal_conv_bad_cache_shape():
    x = _rand(0, (2, 5, 4))
    mod = CausalConv1d(3, 3)
    params = mod.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="cache.history"):
        mod.apply(params, x, ConvCache(jnp.zeros((3, 2, 4))))
