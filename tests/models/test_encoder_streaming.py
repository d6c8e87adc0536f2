"""UpsampleConformerEncoder streaming: a jitted step over fixed-size caches equals the offline chunk-masked
encoder (same look-ahead tokens), with one compilation and a cache whose size does not depend on the stream."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fmjax.models.encoder import EncoderCache
from tests.models.test_encoder import tiny_encoder

LOOKAHEAD = 3


def _stream(model, params, x, lengths, window, *, jit=True, counter=None):
    """Feeds ``x [b, T, d]`` in chunks of C tokens (the last one padded, with its valid length per row) plus
    the next L tokens as look-ahead (fewer, then none, at each row's end). Returns per-row frames and the
    final cache."""
    c = model.config.static_chunk_size
    b, t, d = x.shape

    def step(cache, chunk, n, ctx, n_ctx):
        if counter is not None:
            counter.append(1)  # runs once per trace
        return model.apply(params, chunk, n, context=ctx, context_lengths=n_ctx, cache=cache)

    step = jax.jit(step) if jit else step
    cache = model.init_cache(b, window)
    outs = []
    for start in range(0, t, c):
        chunk = np.zeros((b, c, d), np.float32)
        ctx = np.zeros((b, LOOKAHEAD, d), np.float32)
        chunk[:, : min(c, t - start)] = x[:, start : start + c]
        avail = x[:, start + c : start + c + LOOKAHEAD]
        ctx[:, : avail.shape[1]] = avail
        n = np.clip(lengths - start, 0, c).astype(np.int32)
        n_ctx = np.clip(lengths - start - c, 0, LOOKAHEAD).astype(np.int32)
        h, cache = step(cache, chunk, n, ctx, n_ctx)
        outs.append(np.asarray(h))
    frames = np.concatenate(outs, axis=1)  # [b, s·C·chunks, d]
    s = model.config.upsample_stride
    return [frames[i, : s * lengths[i]] for i in range(b)], cache


def _offline_rows(model, params, x, lengths):
    fn = jax.jit(lambda p, x: model.apply(p, x, chunk_masked=True)[0])
    return [np.asarray(fn(params, x[i : i + 1, : lengths[i]]))[0] for i in range(len(lengths))]


def _x(seed, b, t):
    return np.random.default_rng(seed).standard_normal((b, t, 16)).astype(np.float32)


def _assert_rows_close(streamed, offline, lengths, what):
    for i, (a, b) in enumerate(zip(streamed, offline)):
        assert a.shape == b.shape == (2 * lengths[i], 16)
        err = float(np.abs(a - b).max())
        assert err < 1e-5, f"{what}, row {i}: streaming vs offline chunk-masked max abs error {err:.3g} (tol 1e-5)"


@pytest.mark.parametrize(
    "chunk, left, lengths",
    [
        (1, -1, (7, 5)),  # C = 1 token, rows ending in different chunks
        (2, -1, (13, 10)),  # final partial chunk for row 0
        (5, -1, (23, 17)),  # the fixture's chunk size, partial final chunks for both rows
        (1, 2, (9, 9)),  # left context limited to L = 2 chunks (ring = (L+1)·C slots)
    ],
)
def test_encoder_streaming_equals_offline_chunk_masked(chunk, left, lengths):
    model, params = tiny_encoder(static_chunk_size=chunk, num_left_chunks=left)
    lengths = np.asarray(lengths)
    x = _x(chunk, 2, int(lengths.max()))
    t_pad = -(-int(lengths.max()) // chunk) * chunk
    window = t_pad if left < 0 else (left + 1) * chunk  # unlimited: the ring holds the whole (padded) stream
    streamed, _ = _stream(model, params, x, lengths, window)
    _assert_rows_close(streamed, _offline_rows(model, params, x, lengths), lengths, f"C={chunk} L={left}")


def test_encoder_streaming_eager_equals_jit():
    model, params = tiny_encoder()
    lengths = np.array([8])
    x = _x(5, 1, 8)
    eager, _ = _stream(model, params, x, lengths, 10, jit=False)
    jitted, _ = _stream(model, params, x, lengths, 10, jit=True)
    err = float(np.abs(eager[0] - jitted[0]).max())
    assert err < 1e-5, f"eager vs jit {err:.3g} (tol 1e-5)"


def _nbytes(tree) -> int:
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def test_encoder_streaming_one_compilation_and_constant_cache():
    """A 9-chunk stream (C = 2, left context L = 1 chunk, 3 rows ending in different chunks) compiles once,
    equals offline, and its cache keeps its shapes and byte count, fixed by (batch, window)."""
    model, params = tiny_encoder(static_chunk_size=2, num_left_chunks=1)
    lengths = np.array([17, 14, 9])
    x = _x(6, 3, 17)
    traces = []
    init = model.init_cache(3, 4)
    streamed, final = _stream(model, params, x, lengths, 4, counter=traces)
    assert len(traces) == 1, f"the step was traced {len(traces)} times for 9 chunks"
    _assert_rows_close(streamed, _offline_rows(model, params, x, lengths), lengths, "C=2 L=1")
    assert isinstance(final, EncoderCache)
    shapes = lambda c: [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(c)]  # noqa: E731
    assert shapes(final) == shapes(init)
    # Bytes by hand: 2 look-ahead frames of 24 floats and 4 upsample frames of 16; per layer keys + values
    # (w slots of h·k = 16 floats), w int32 positions and one int32 count per row; w = 4 tokens in the 2 first-stack
    # layers, 8 frames in the 2 second-stack layers.
    b, d = 3, 16
    per_layer = lambda w: 2 * b * w * d * 4 + b * w * 4 + b * 4  # noqa: E731
    expected = b * 2 * 24 * 4 + b * 4 * d * 4 + 2 * per_layer(4) + 2 * per_layer(8)
    assert _nbytes(final) == _nbytes(init) == expected
    print(f"\ntiny encoder cache, batch 3, window 4 tokens: {expected} bytes")
    # The last chunk's positions are stored as absolute stream offsets.
    # per row: each row advanced by whole chunks up to its own end (rows that ended earlier were idle)
    assert np.asarray(final.encoders[0].count).tolist() == [18, 14, 10]
    assert np.asarray(final.up_encoders[0].count).tolist() == [36, 28, 20]
    assert int(final.encoders[0].pos.max()) == 16  # row 0's last token


def test_encoder_streaming_sliding_window_when_stream_exceeds_window():
    """With L = -1 and a window shorter than the stream, later chunks lose the oldest keys (a sliding window):
    frames within the window stay exact, later ones differ from unlimited offline attention."""
    model, params = tiny_encoder()
    lengths = np.array([20])
    x = _x(8, 1, 20)
    streamed, _ = _stream(model, params, x, lengths, 10)
    offline = _offline_rows(model, params, x, lengths)[0]
    assert float(np.abs(streamed[0][:20] - offline[:20]).max()) < 1e-5  # chunks 0-1 fit the window
    assert float(np.abs(streamed[0][20:] - offline[20:]).max()) > 1e-3
