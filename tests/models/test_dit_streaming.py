"""DiT streaming step == offline chunk-masked forward (true absolute rotary positions over a short ring buffer);
one compilation; fixed cache size; bad input."""

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_dit import TINY, tiny_inputs, tiny_params  # noqa: E402

from fmjax.cond import MelCond  # noqa: E402
from fmjax.models.dit import DiT, unstack_block_params  # noqa: E402
from fmjax.nn.masks import ChunkSpec  # noqa: E402


def _frames(tree, s, n, t):
    """Frames ``s .. s+n-1`` of every leaf with a time axis of length ``t`` (``spks`` and ``t`` pass)."""
    return jax.tree_util.tree_map(lambda a: a[:, s:s + n] if a.ndim > 1 and a.shape[1] == t else a, tree)


def stream(model, params, x, cond, t, window, *, pad_last=True):
    """Feeds ``x`` chunk by chunk through one jitted step; returns (concatenated output, final cache, step)."""
    c, total = model.config.chunk_size, x.shape[1]
    velocity = jax.jit(lambda t, x, cond, cache: model.apply(params, x, cond, t, cache))  # the sampler's closure
    cache = model.init_cache(x.shape[0], window)
    outs = []
    for s in range(0, total, c):
        n = min(c, total - s)
        xc, cc = _frames((x, cond), s, n, total)
        if pad_last and n < c:  # pad outside, so that every step has the same shapes
            pad = ((0, 0), (0, c - n), (0, 0))
            xc = jnp.pad(xc, pad)
            cc = MelCond(jnp.pad(cc.mu, pad), cc.spks, jnp.pad(cc.prompt, pad), jnp.pad(cc.mask, pad[:2]))
        v, cache = velocity(t, xc, cc, cache)
        outs.append(np.asarray(v)[:, :n])
    return np.concatenate(outs, 1), cache, velocity


@pytest.mark.parametrize("chunk,left", [(1, 0), (3, 1), (10, 2), (1, -1), (3, -1), (10, -1)])
def test_dit_streaming_equals_offline(chunk, left):
    cfg = dataclasses.replace(TINY, chunk_size=chunk, num_left_chunks=left)
    model = DiT(cfg)
    params = tiny_params()  # the chunk settings do not change the params
    x, cond, t = tiny_inputs(lengths=(23, 17))  # 23 frames: the last chunk is partial for C = 3 and 10
    chunked = cond._replace(chunk=ChunkSpec.chunked(2, chunk, left))
    expected = jax.jit(lambda x, c, t: model.apply(params, x, c, t)[0])(x, chunked, t)
    window = -(-23 // chunk) * chunk if left < 0 else cfg.min_window()  # L = -1: the window holds the stream
    got, _, _ = stream(model, params, x, cond, t, window, pad_last=left >= 0)  # L = -1: last chunk padded inside
    # every frame of every chunk that holds a valid frame, padded ones included (item 1 from frame 17), batch of 2;
    # the stream's rotary positions reach 22 while a window of (L + 1)·C slots holds only the last few frames. A
    # chunk with no valid frame leaves its row idle (its state unchanged), so the padded outputs after it are not
    # the offline ones (neither is meaningful; the U-Net zeroes them).
    for row, n in enumerate((23, 17)):
        end = -(-n // chunk) * chunk
        np.testing.assert_allclose(got[row, :end], np.asarray(expected)[row, :end], rtol=0, atol=1e-5)
    if (chunk, left) == (3, 1):  # the left limit really cuts context: full-context attention differs
        full = jax.jit(lambda x, c, t: model.apply(params, x, c, t)[0])(x, cond, t)
        assert np.abs(np.asarray(full)[0, :17] - got[0, :17]).max() > 1e-3


def test_dit_one_compilation_and_fixed_cache_size():
    model = DiT(TINY)  # C = 4
    params = tiny_params()
    x, cond, t = tiny_inputs(t=34, lengths=(34, 30))  # 9 chunks, the last one partial
    window = 12
    nbytes = model.cache_nbytes(2, window)
    got, cache, velocity = stream(model, params, x, cond, t, window)
    assert velocity._cache_size() == 1  # one compiled step served all 9 chunks
    assert sum(a.nbytes for a in jax.tree_util.tree_leaves(cache)) == nbytes
    assert jax.tree_util.tree_structure(cache) == jax.tree_util.tree_structure(model.init_cache(2, window))
    # by hand: per block K and V [b, w, h, k] float32, positions [b, w] int32, count; conv histories [b, k-1, d]
    b, cfg = 2, TINY
    kv = 2 * b * window * cfg.heads * cfg.dim_head * 4 + b * window * 4 + b * 4
    conv = 2 * b * (cfg.conv_pos_kernel - 1) * cfg.dim * 4
    assert nbytes == cfg.depth * kv + conv
    assert model.cache_nbytes(2, 3 * window) > nbytes  # grows with the window only, never with the stream
    # row 1 (30 frames) had nothing valid in the last chunk (frames 32-35): idle, it stayed at 32
    assert np.asarray(cache.blocks[0].count).tolist() == [36, 32]


def test_dit_streaming_bad_input():
    model = DiT(TINY)  # C = 4
    params = tiny_params()
    x, cond, t = tiny_inputs(t=8, lengths=(8, 8))
    cache = model.init_cache(2, 8)
    with pytest.raises(ValueError, match="at most chunk_size=4"):
        model.apply(params, x, cond, t, cache)
    x4, c4 = _frames((x, cond), 0, 4, 8)
    with pytest.raises(ValueError, match="built for batch 3"):
        model.apply(params, x4, c4, t, model.init_cache(3, 8))
    with pytest.raises(ValueError, match="window: expected at least 4"):
        model.init_cache(2, 3)
    with pytest.raises(ValueError, match="window: expected at least 12"):
        DiT(dataclasses.replace(TINY, num_left_chunks=2)).init_cache(2, 11)
    with pytest.raises(ValueError, match="smaller than min_window"):  # a cache of another config
        DiT(dataclasses.replace(TINY, num_left_chunks=2)).apply(params, x4, c4, t, cache)
    with pytest.raises(ValueError, match=r"cache\.conv_pos\.conv2\.history: expected"):
        model.apply(params, x4, c4, t, cache._replace(conv_pos=cache.conv_pos._replace(conv2=type(cache.conv_pos.conv2)(
            cache.conv_pos.conv2.history[:, :3]))))
    with pytest.raises(TypeError, match="DiTCache"):
        model.apply(params, x4, c4, t, tuple(cache))
    with pytest.raises(ValueError, match="streaming"):
        model.apply(params, x4, c4, t, cache, streaming=True)
    with pytest.raises(ValueError, match="cond.prompt"):
        model.apply(params, x4, c4._replace(prompt=cond.prompt[:, :3]), t, cache)


def test_dit_old_stacked_layout_converts():
    model = DiT(TINY)
    params = tiny_params()
    x, cond, t = tiny_inputs(t=8, lengths=(8, 6))
    blocks = [params["params"][f"blocks_{i}"] for i in range(TINY.depth)]
    old = {"params": {k: v for k, v in params["params"].items() if not k.startswith("blocks_")}}
    old["params"]["blocks"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *blocks)  # the fmjax < 0.2 layout
    with pytest.raises(ValueError, match="unstack_block_params"):
        model.apply(old, x, cond, t)
    np.testing.assert_array_equal(np.asarray(model.apply(unstack_block_params(old), x, cond, t)[0]),
                                  np.asarray(model.apply(params, x, cond, t)[0]))
