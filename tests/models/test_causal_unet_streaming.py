"""Causal U-Net streaming step == offline chunk-masked forward; one compilation; fixed cache size; bad input."""

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_causal_unet import TINY, tiny_inputs, tiny_params  # noqa: E402

from fmjax.cond import MelCond  # noqa: E402
from fmjax.models.causal_unet import CausalConditionalDecoder, unstack_mid_params  # noqa: E402
from fmjax.nn.masks import ChunkSpec  # noqa: E402


def stream(model, params, x, cond, t, window, *, pad_last=True):
    """Feeds ``x`` chunk by chunk through one jitted step; returns (concatenated output, final cache, step)."""
    c = model.config.chunk_size
    velocity = jax.jit(lambda t, x, cond, cache: model.apply(params, x, cond, t, cache))  # the sampler's closure
    cache = model.init_cache(x.shape[0], window)
    outs = []
    for s in range(0, x.shape[1], c):
        n = min(c, x.shape[1] - s)
        xc = x[:, s:s + n]
        cc = MelCond(cond.mu[:, s:s + n], cond.spks, cond.prompt[:, s:s + n], cond.mask[:, s:s + n])
        if pad_last and n < c:  # pad outside, so that every step has the same shapes
            pad = ((0, 0), (0, c - n), (0, 0))
            xc = jnp.pad(xc, pad)
            cc = MelCond(jnp.pad(cc.mu, pad), cc.spks, jnp.pad(cc.prompt, pad), jnp.pad(cc.mask, pad[:2]))
        v, cache = velocity(t, xc, cc, cache)
        outs.append(v[:, :n])
    return np.concatenate(outs, 1), cache, velocity


@pytest.mark.parametrize("chunk,left", [(1, 0), (3, 1), (10, 2), (1, -1), (3, -1), (10, -1)])
def test_causal_unet_streaming_equals_offline(chunk, left):
    cfg = dataclasses.replace(TINY, n_blocks=1, chunk_size=chunk, num_left_chunks=left)  # n_blocks 1: faster compiles
    model = CausalConditionalDecoder(cfg)
    params = tiny_params(dataclasses.replace(cfg, chunk_size=4, num_left_chunks=-1))  # same params for every C, L
    x, cond, t = tiny_inputs(lengths=(23, 17))  # 23 frames: the last chunk is partial for C = 3 and 10
    chunked = cond._replace(chunk=ChunkSpec.chunked(2, chunk, left))
    expected, _ = jax.jit(lambda x, c, t: model.apply(params, x, c, t))(x, chunked, t)
    window = -(-23 // chunk) * chunk if left < 0 else cfg.min_window()  # L = -1: the window holds the stream
    got, _, _ = stream(model, params, x, cond, t, window, pad_last=left != -1 or chunk != 10)  # padded inside once
    np.testing.assert_allclose(got, np.asarray(expected), rtol=0, atol=1e-5)


def test_causal_unet_rows_stream_at_their_own_positions():
    """Rows of one cache start at different times (idle chunks have no valid frame); each row equals its own
    offline chunk-masked forward, and an idle row's cache does not change."""
    cfg = dataclasses.replace(TINY, n_blocks=1)
    model = CausalConditionalDecoder(cfg)
    params = tiny_params(cfg)
    c = cfg.chunk_size
    x, cond, t = tiny_inputs(t=16, lengths=(16, 13))
    offline = np.asarray(model.apply(params, x, cond._replace(chunk=ChunkSpec.chunked(2, c)), t)[0])
    step = jax.jit(lambda x, cond, t, cache: model.apply(params, x, cond, t, cache))
    cache = model.init_cache(2, 16)
    delay = (0, 2)  # row 1 starts two steps after row 0
    outs = [[], []]
    for k in range(16 // c + max(delay)):
        chunks = [k - d for d in delay]  # the chunk each row computes now (out of range = idle)
        def rows(a):
            return jnp.stack([a[i, j * c:(j + 1) * c] if 0 <= j < 16 // c else jnp.zeros_like(a[i, :c])
                              for i, j in enumerate(chunks)])
        before = cache
        v, cache = step(rows(x), MelCond(rows(cond.mu), cond.spks, rows(cond.prompt), rows(cond.mask)), t, cache)
        for i, j in enumerate(chunks):
            if 0 <= j < 16 // c:
                outs[i].append(np.asarray(v[i]))
            else:  # idle: every leaf of this row's state is unchanged except K/V slots it will overwrite later
                assert int(cache.down.attn[0].count[i]) == int(before.down.attn[0].count[i])
                np.testing.assert_array_equal(np.asarray(cache.final_block.history[i]),
                                              np.asarray(before.final_block.history[i]))
    for i in range(2):
        n = int(cond.mask[i].sum())
        np.testing.assert_allclose(np.concatenate(outs[i])[:n], offline[i, :n], rtol=0, atol=1e-5)
    assert np.asarray(cache.down.attn[0].count).tolist() == [16, 16]
    assert step._cache_size() == 1


def test_causal_unet_old_stacked_layout_converts():
    cfg = dataclasses.replace(TINY, n_blocks=1)
    model = CausalConditionalDecoder(cfg)
    params = tiny_params(cfg)
    x, cond, t = tiny_inputs(t=8, lengths=(8, 6))
    mids = [params["params"][f"mid_{i}"] for i in range(cfg.num_mid_blocks)]
    old = {"params": {k: v for k, v in params["params"].items() if not k.startswith("mid_")}}
    old["params"]["mid"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *mids)  # the fmjax < 0.2 layout
    with pytest.raises(ValueError, match="unstack_mid_params"):
        model.apply(old, x, cond, t)
    np.testing.assert_array_equal(np.asarray(model.apply(unstack_mid_params(old), x, cond, t)[0]),
                                  np.asarray(model.apply(params, x, cond, t)[0]))
    assert unstack_mid_params(params) is params


def test_causal_unet_one_compilation_and_fixed_cache_size():
    model = CausalConditionalDecoder(TINY)  # C = 4
    params = tiny_params()
    x, cond, t = tiny_inputs(t=34, lengths=(34, 30))  # 9 chunks, the last one partial
    window = 12
    nbytes = model.cache_nbytes(2, window)
    got, cache, velocity = stream(model, params, x, cond, t, window)
    assert velocity._cache_size() == 1  # one compiled step served all 9 chunks
    leaves = jax.tree_util.tree_leaves(cache)
    assert sum(a.nbytes for a in leaves) == nbytes
    assert jax.tree_util.tree_structure(cache) == jax.tree_util.tree_structure(model.init_cache(2, window))
    # by hand: 1 + 2 + 1 stages x 2 blocks of K/V (+ positions, count); conv histories of 2 frames
    d, b = TINY.channels, 2
    kv = b * window * TINY.num_heads * TINY.head_dim * 4 * 2 + b * window * 4 + b * 4
    conv = b * 2 * 4 * ((TINY.in_channels + d) + d + 2 * (d + d) + (2 * d + d) + d + d)
    assert nbytes == 4 * TINY.n_blocks * kv + conv
    assert model.cache_nbytes(2, 3 * window) > nbytes  # grows with the window only, never with the stream
    # row 1 (30 frames) had nothing valid in the last chunk (frames 32-35): it stayed at 32
    assert np.asarray(cache.down.attn[0].count).tolist() == [36, 32]


def test_causal_unet_streaming_bad_input():
    model = CausalConditionalDecoder(TINY)
    params = tiny_params()
    x, cond, t = tiny_inputs(t=8, lengths=(8, 8))
    cache = model.init_cache(2, 8)
    with pytest.raises(ValueError, match="at most chunk_size=4"):
        model.apply(params, x, cond, t, cache)
    x4 = x[:, :4]
    c4 = MelCond(cond.mu[:, :4], cond.spks, cond.prompt[:, :4], cond.mask[:, :4])
    with pytest.raises(ValueError, match="batch 3"):
        model.apply(params, x4, c4, t, model.init_cache(3, 8))
    with pytest.raises(ValueError, match="window: expected at least 4"):
        model.init_cache(2, 3)
    with pytest.raises(ValueError, match="window: expected at least 12"):
        CausalConditionalDecoder(dataclasses.replace(TINY, num_left_chunks=2)).init_cache(2, 11)
    with pytest.raises(TypeError, match="CausalUNetCache"):
        model.apply(params, x4, c4, t, tuple(cache))
    with pytest.raises(ValueError, match="streaming"):
        model.apply(params, x4, c4, t, cache, streaming=True)
    with pytest.raises(ValueError, match="cond.prompt"):
        model.apply(params, x4, c4._replace(prompt=cond.prompt[:, :3]), t, cache)
