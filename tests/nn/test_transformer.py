"""Transformer block vs a torch functional re-computation (diffusers semantics), and its streaming form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn.masks import chunk_mask, fill_empty_rows
from fmjax.nn.transformer import FeedForward, TransformerBlock


def _normal(seed, shape):
    """Standard-normal test inputs from numpy (an eager ``jax.random.normal`` compiles a program per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _perturbed(params, key=7):
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(key)
    return jax.tree_util.tree_unflatten(tree, [p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype)
                                               for p in leaves])


def _torch_block(torch, p, x, mask, heads, activation):
    F = torch.nn.functional
    T = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    lin = lambda h, q, bias=True: F.linear(h, T(q["kernel"]).T, T(q["bias"]) if bias else None)  # noqa: E731
    x = T(x)
    b, t, d = x.shape
    h = F.layer_norm(x, (d,), T(p["norm1"]["scale"]), T(p["norm1"]["bias"]), 1e-5)
    a = p["attn1"]
    q, k, v = (lin(h, a[n], bias=False).view(b, t, heads, -1).transpose(1, 2) for n in ("to_q", "to_k", "to_v"))
    bias = torch.where(T(mask), 0.0, -1e10)[:, None]  # CosyVoice's additive mask
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, t, -1)
    x = x + lin(o, a["to_out"])
    h = F.layer_norm(x, (d,), T(p["norm3"]["scale"]), T(p["norm3"]["bias"]), 1e-5)
    h = lin(h, p["ff"]["proj_in"])
    if activation == "snakebeta":
        alpha, beta = torch.exp(T(p["ff"]["alpha"])), torch.exp(T(p["ff"]["beta"]))
        h = h + 1.0 / (beta + 1e-9) * torch.sin(h * alpha) ** 2
    else:
        h = F.gelu(h, approximate="tanh" if activation == "gelu_tanh" else "none")
    return (x + lin(h, p["ff"]["proj_out"])).numpy()


@pytest.mark.torch
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "snakebeta"])
def test_transformer_block_matches_torch(activation):
    torch = pytest.importorskip("torch")
    x = _normal(0, (2, 11, 16))
    valid = jnp.arange(11)[None] < jnp.array([11, 8])[:, None]
    mask = fill_empty_rows(chunk_mask(11, 4)[None] & valid[:, None, :])
    block = TransformerBlock(heads=2, head_dim=8, activation=activation)
    params = _perturbed(block.init(jax.random.key(1), x, mask))
    y, cache = jax.jit(block.apply)(params, x, mask)
    assert cache is None
    expected = _torch_block(torch, params["params"], x, mask, 2, activation)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=1e-5)


def test_transformer_block_streaming_equals_offline():
    t, c = 14, 4
    x = _normal(0, (2, 16, 16))
    valid = jnp.arange(16)[None] < jnp.array([t, 11])[:, None]
    mask = fill_empty_rows(chunk_mask(16, c, 1)[None] & valid[:, None, :])
    block = TransformerBlock(heads=2, head_dim=8)
    params = _perturbed(block.init(jax.random.key(1), x, mask))
    expected, _ = block.apply(params, x, mask)
    cache = block.init_cache(2, 2 * c)
    step = jax.jit(lambda x, v, cache: block.apply(params, x, None, cache, valid=v, chunk_size=c, num_left_chunks=1))
    outs = []
    for s in range(0, 16, c):
        y, cache = step(x[:, s:s + c], valid[:, s:s + c], cache)
        outs.append(y)
    got = np.concatenate(outs, 1)
    np.testing.assert_allclose(got[0, :t], expected[0, :t], atol=1e-5)
    np.testing.assert_allclose(got[1, :11], expected[1, :11], atol=1e-5)


def test_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        FeedForward(activation="relu").init(jax.random.key(0), jnp.zeros((1, 2, 4)))
