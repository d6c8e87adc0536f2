"""Masks: chunk semantics vs a loop reference, fixtures' attention bias, row filling, dynamic chunk draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import masks


def _loop_chunk_mask(t, c, left):
    """The definition written out as a loop (WeNet's deprecated ``subsequent_chunk_mask``)."""
    out = np.zeros((t, t), bool)
    for i in range(t):
        start = 0 if left < 0 else max((i // c - left) * c, 0)
        out[i, start : min((i // c + 1) * c, t)] = True
    return out


def test_padding_mask():
    got = masks.padding_mask(jnp.array([5, 3, 0]), 5)
    expected = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("t,c,left", [(23, 1, 0), (23, 3, 1), (23, 10, 2), (23, 3, -1), (7, 10, -1), (30, 4, 0)])
def test_chunk_mask_matches_loop_definition(t, c, left):
    np.testing.assert_array_equal(masks.chunk_mask(t, c, left), _loop_chunk_mask(t, c, left))


def test_chunk_visibility_positions_and_invalid_keys():
    q = jnp.array([10, 11, 12, 13, 14])
    k = jnp.array([-1, 3, 5, 7, 9, 10, 12, 14, 15])
    got = masks.chunk_visibility(q, k, 5, 1)
    # queries in chunk 2 ([10, 15)) see chunks 1 and 2: keys 5..14; position -1 never
    expected = np.broadcast_to(np.array([0, 0, 1, 1, 1, 1, 1, 1, 0], bool), (5, 9))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name,chunk", [("est_full.npz", 0), ("est_stream.npz", 10)])
def test_attention_mask_matches_cosyvoice_bias(fixture, name, chunk):
    f = fixture(name)
    mask = masks.attention_mask(f["in/mask"][:, 0], chunk, -1)
    bias = np.where(np.broadcast_to(np.asarray(mask), f["aux/attn_bias"].shape), 0.0, -1e10)
    np.testing.assert_array_equal(bias, f["aux/attn_bias"])


def test_fill_empty_rows_only_touches_empty_rows():
    m = jnp.array([[[1, 0, 0], [0, 0, 0], [0, 1, 1]]], bool)
    np.testing.assert_array_equal(masks.fill_empty_rows(m), [[[1, 0, 0], [1, 1, 1], [0, 1, 1]]])


def test_attention_mask_fills_rows_of_empty_examples():
    got = masks.attention_mask(jnp.array([[1, 1, 0], [0, 0, 0]]), 0)
    assert got.shape == (2, 1, 3)
    np.testing.assert_array_equal(got[:, 0], [[1, 1, 0], [1, 1, 1]])
    got = masks.attention_mask(jnp.array([[1, 1, 0, 0]]), 2, 0)  # chunk 1 holds only padding
    np.testing.assert_array_equal(got[0], [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])


def test_mask_bad_input():
    with pytest.raises(ValueError, match="chunk_size"):
        masks.chunk_mask(5, 0)
    with pytest.raises(ValueError, match="frame_mask"):
        masks.attention_mask(jnp.ones(5), 2)
    with pytest.raises(ValueError, match="lengths"):
        masks.padding_mask(jnp.ones((2, 2), int), 4)


def test_dynamic_chunk_draws_follow_wenet_distribution():
    t = 60
    draw = jax.jit(jax.vmap(lambda k: masks.draw_dynamic_chunk(k, t, use_dynamic_left_chunk=True)))
    chunk, left = map(np.asarray, draw(jax.random.split(jax.random.key(0), 4000)))
    full = chunk == t
    # c ~ U{1..59}: full context iff c > 30 -> 29/59 of the draws
    assert abs(full.mean() - 29 / 59) < 0.03
    assert np.all(left[full] == -1)
    small = chunk[~full]
    assert small.min() >= 1 and small.max() <= 25
    # c in 1..30 -> c % 25 + 1: sizes 2..6 twice (c and c + 25), sizes 1 and 7..25 once
    counts = np.bincount(small, minlength=26)
    assert counts[2:7].mean() > 1.6 * np.r_[counts[1], counts[7:26]].mean()
    assert counts[1:].min() > 0
    lp = left[~full]
    assert np.all(lp >= 0) and np.all(lp <= np.maximum((t - 1) // small - 1, 0))


def test_dynamic_chunk_mask_is_chunk_visibility_of_the_draw():
    key = jax.random.key(3)
    frame_mask = masks.padding_mask(jnp.array([40, 33]), 40)
    got = masks.dynamic_chunk_mask(key, frame_mask, use_dynamic_left_chunk=True)
    chunk, left = masks.draw_dynamic_chunk(key, 40, use_dynamic_left_chunk=True)
    expected = _loop_chunk_mask(40, int(chunk), int(left))[None] & np.asarray(frame_mask)[:, None, :]
    np.testing.assert_array_equal(got, expected)
    no_left = masks.draw_dynamic_chunk(key, 40, use_dynamic_left_chunk=False)[1]
    assert int(no_left) == -1
