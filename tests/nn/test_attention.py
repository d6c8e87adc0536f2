"""Attention core vs a float64 reference, the K/V ring buffer, and streaming == offline chunk attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import attention as A
from fmjax.nn.masks import chunk_mask, fill_empty_rows


def _reference(q, k, v, mask=None, bias=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        s = s + np.asarray(bias)[:, None]
    if mask is not None:
        s = np.where(np.asarray(mask)[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhts,bshk->bthk", p / p.sum(-1, keepdims=True), v)


def _normal(seed, shape):
    """Standard-normal test inputs from numpy (an eager ``jax.random.normal`` compiles a program per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _bernoulli(seed, p, shape):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def _qkv(t, s, key=0, h=3, d=8):
    return _normal(3 * key, (2, t, h, d)), _normal(3 * key + 1, (2, s, h, d)), _normal(3 * key + 2, (2, s, h, d))


@pytest.mark.parametrize("t,s,block_bytes", [(7, 9, None), (37, 41, 2**14)])  # the second: 3 query blocks
def test_dot_product_attention_matches_reference(t, s, block_bytes, monkeypatch):
    if block_bytes:
        monkeypatch.setattr(A, "_BLOCK_BYTES", block_bytes)
        assert A._query_block(2 * 3, t, s) == 16
    q, k, v = _qkv(t, s)
    mask = _bernoulli(5, 0.6, (2, t, s)).at[:, :, 0].set(True)
    bias = _normal(6, (2, t, s))
    np.testing.assert_allclose(A.dot_product_attention(q, k, v, mask=mask, bias=bias), _reference(q, k, v, mask, bias),
                               atol=1e-5)
    kpad = mask[:, :1]  # [b, 1, s] key padding, broadcast over queries
    np.testing.assert_allclose(A.dot_product_attention(q, k, v, mask=kpad), _reference(q, k, v, kpad), atol=1e-5)
    np.testing.assert_allclose(A.dot_product_attention(q, k, v), _reference(q, k, v), atol=1e-5)


def test_dot_product_attention_per_head_mask_and_bad_shapes():
    q, k, v = _qkv(5, 6)
    mask = _bernoulli(5, 0.6, (2, 3, 5, 6)).at[..., 0].set(True)
    out = A.dot_product_attention(q, k, v, mask=mask)
    for h in range(3):
        np.testing.assert_allclose(out[:, :, h : h + 1], _reference(q[:, :, h:h + 1], k[:, :, h:h + 1],
                                                                      v[:, :, h:h + 1], mask[:, h]), atol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        A.dot_product_attention(q, k, v, mask=jnp.ones((2, 5, 7), bool))


def test_kv_cache_ring_buffer_positions():
    cache = A.init_kv_cache(2, 5, 1, 2)
    assert cache.pos.dtype == jnp.int32 and cache.count.shape == (2,)  # one position per row
    k = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 1, 2)
    valid = jnp.array([[1, 1, 1], [1, 1, 0]], bool)
    cache = A.kv_cache_write(cache, k, k, valid)
    np.testing.assert_array_equal(cache.pos, [[0, 1, 2, -1, -1], [0, 1, -1, -1, -1]])
    cache = A.kv_cache_write(cache, k + 100, k + 100, jnp.ones((2, 3), bool))  # wraps: slots 3, 4, 0
    np.testing.assert_array_equal(cache.pos, [[5, 1, 2, 3, 4], [5, 1, -1, 3, 4]])
    assert np.asarray(cache.count).tolist() == [6, 6]
    # a row with no valid frame is idle: it does not advance, its slots ahead are marked empty
    idle = A.kv_cache_write(cache, k, k, jnp.array([[1, 1, 1], [0, 0, 0]], bool))
    assert np.asarray(idle.count).tolist() == [9, 6]
    np.testing.assert_array_equal(idle.pos[1], [5, -1, -1, -1, 4])  # positions 6-8: its next chunk's slots
    np.testing.assert_array_equal(cache.keys[0, 0, 0], k[0, 2, 0] + 100)
    with pytest.raises(ValueError, match="does not fit"):
        A.kv_cache_write(cache, jnp.zeros((2, 6, 1, 2)), jnp.zeros((2, 6, 1, 2)), jnp.ones((2, 6), bool))
    with pytest.raises(ValueError, match="window"):
        A.init_kv_cache(1, 0, 1, 2)


@pytest.mark.parametrize("chunk,left,window", [(1, 0, 1), (3, 1, 6), (4, 2, 13), (3, -1, 24), (10, -1, 30)])
def test_cached_attention_streaming_equals_offline(chunk, left, window):
    t = 23
    q, k, v = _qkv(t, t, key=1)
    valid = jnp.arange(t)[None] < jnp.array([t, 17])[:, None]  # example 1 is padded
    full = fill_empty_rows(chunk_mask(t, chunk, left)[None] & valid[:, None, :])
    expected = A.dot_product_attention(q, k, v, mask=full)
    cache = A.init_kv_cache(2, window, 3, 8)
    step = jax.jit(lambda q, k, v, c, m: A.cached_attention(q, k, v, c, m, chunk_size=chunk, num_left_chunks=left))
    outs = []
    n = -(-t // chunk) * chunk
    pad = [(0, 0), (0, n - t), (0, 0), (0, 0)]
    qp, kp, vp = (jnp.pad(a, pad) for a in (q, k, v))
    validp = jnp.pad(valid, [(0, 0), (0, n - t)])
    for s in range(0, n, chunk):
        out, cache = step(qp[:, s:s + chunk], kp[:, s:s + chunk], vp[:, s:s + chunk], cache, validp[:, s:s + chunk])
        outs.append(out)
    got = np.concatenate(outs, 1)[:, :t]
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :17], expected[1, :17], atol=1e-5)  # padded queries only see what is held
    assert step._cache_size() == 1


def test_multi_head_attention_streaming_requires_valid():
    x = _normal(0, (2, 4, 6))
    mod = A.MultiHeadAttention(2, 3)
    params = mod.init(jax.random.key(1), x)
    assert params["params"]["to_q"]["kernel"].shape == (6, 6) and "bias" not in params["params"]["to_q"]
    assert "bias" in params["params"]["to_out"]
    with pytest.raises(ValueError, match="valid"):
        mod.apply(params, x, None, mod.init_cache(2, 4), chunk_size=4)
