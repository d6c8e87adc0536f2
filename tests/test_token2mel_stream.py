"""Streaming token2mel == offline chunk-masked token2mel (prompts aligned or not, chunk sizes 1/2/5, final partial
chunks, batched rows ending at different steps, limited left context), one compilation, constant state, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fmjax.token2mel import token2mel
from fmjax.pipelines.stream import _advance
from fmjax.token2mel_stream import StreamState, Token2MelStream
from tests.models.test_flow import tiny_flow

STEPS = 3  # ODE steps
LOOKAHEAD = 3


def _data(seed, b, n, p):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 50, (b, n)), rng.standard_normal((b, 12)).astype(np.float32),
            rng.integers(0, 50, (b, p)), rng.standard_normal((b, 2 * p, 80)).astype(np.float32))


def stream_all(stream, params, tokens, lengths, emb, prompt, pmel, plens):
    """Feeds every row C tokens per step with the next L as look-ahead (fewer near the end); a row whose
    remaining tokens fit one chunk gets them as its final step. Returns the frames of each row and the state."""
    c = stream.model.config.chunk_size
    b = tokens.shape[0]
    state = stream.init(params, emb, prompt, pmel, prompt_lengths=plens)
    outs = [[] for _ in range(b)]
    start = 0
    while not state.ended.all():
        left = lengths - start
        state, out = stream.step(
            params, state, tokens[:, start : start + c], tokens[:, start + c : start + c + LOOKAHEAD],
            lengths=np.clip(left, 0, c), lookahead_lengths=np.clip(left - c, 0, LOOKAHEAD), final=left <= c,
        )
        for i in range(b):
            outs[i].append(np.asarray(out.mel[i, : int(out.lengths[i])]))
        start += c
    return [np.concatenate(o) for o in outs], state


def _assert_rows_equal(streamed, offline, lengths, what):
    for i, got in enumerate(streamed):
        ref = np.asarray(offline.mel[i, : 2 * lengths[i]])
        assert got.shape == ref.shape, f"{what}, row {i}: streamed {got.shape} vs offline {ref.shape} frames"
        err = float(np.abs(got - ref).max())
        assert err < 1e-4, f"{what}, row {i}: streamed vs offline chunk-masked max abs error {err:.3g} (tol 1e-4)"


@pytest.mark.parametrize(
    "chunk, prompts, total",
    [
        (1, (2, 3), 9),  # every prompt is aligned when C = 1; 4 chunks wait for look-ahead at the start
        (2, (4, 5, 0), 13),  # P mod C = 0, 1 (< L: the last whole prompt chunk waits too), no prompt
        (5, (10, 11, 14), 23),  # P mod C = 0, 1, 4 (>= L: only the partial chunk waits)
    ],
)
def test_stream_equals_offline_chunk_masked(chunk, prompts, total):
    """Rows of one batch share the total length P + N (not a multiple of C: a final partial chunk), so the
    offline reference is one unpadded batch; rows with longer prompts end one step or more earlier."""
    model, params = tiny_flow(chunk)
    b = len(prompts)
    plens = np.array(prompts)
    lengths = total - plens
    tokens, emb, prompt, pmel = _data(chunk, b, int(lengths.max()), int(plens.max()))
    offline = token2mel(model, params, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                        prompt_lengths=plens, streaming=True, n_steps=STEPS)
    window = -(-total // chunk) * chunk  # all left chunks: the stream (last chunk padded to C) fits the window
    stream = Token2MelStream(model, window_tokens=window, n_steps=STEPS)
    streamed, state = stream_all(stream, stream.prepare_params(params), tokens, lengths, emb, prompt, pmel, plens)
    _assert_rows_equal(streamed, offline, lengths, f"C={chunk}")
    np.testing.assert_array_equal(state.received, total)


def test_stream_limited_left_context_one_compilation_constant_state():
    """A 40-chunk stream (C = 1) with one left chunk: equals offline chunk-masked inference with the same left
    context, compiles its step once (prompt included), and its state never changes size."""
    model, params = tiny_flow(chunk=1, left=1)
    tokens, emb, prompt, pmel = _data(7, 2, 41, 3)
    lengths, plens = np.array([40, 41]), np.array([3, 2])  # equal totals: the offline batch has no padding
    offline = token2mel(model, params, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                        prompt_lengths=plens, streaming=True, n_steps=STEPS)
    stream = Token2MelStream(model, window_tokens=2, n_steps=STEPS)  # (L + 1)·C tokens
    before = _advance._cache_size()
    nbytes = stream.state_nbytes(2)
    state = stream.init(params, emb, prompt, pmel, prompt_lengths=plens)
    shapes = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state.rows)
    streamed, state = stream_all(stream, params, tokens, lengths, emb, prompt, pmel, plens)
    assert _advance._cache_size() - before == 1, "the stream step compiled more than once"
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state.rows) == shapes
    assert sum(a.nbytes for a in jax.tree_util.tree_leaves(state.rows)) == nbytes
    assert Token2MelStream(model, window_tokens=8, n_steps=STEPS).state_nbytes(2) > nbytes  # window, not stream
    _assert_rows_equal(streamed, offline, lengths, "L=1")


def test_stream_emits_after_prompt_and_waits_for_lookahead():
    """P = 5, C = 2, L = 3, 9 new tokens. The first step computes the last whole prompt chunk (its look-ahead
    reached past the prompt) and the chunk holding the prompt's last token, emitting its one new token; then
    one chunk (4 frames) per step; a step whose look-ahead is short emits nothing, and the final step flushes
    the rest. The frames equal the offline chunk-masked ones."""
    model, params = tiny_flow(chunk=2)
    tokens, emb, prompt, pmel = _data(3, 1, 9, 5)
    stream = Token2MelStream(model, window_tokens=14, n_steps=STEPS)
    split = stream.prepare_params(params)  # params on the device (one layout: the same as offline)
    state = stream.init(split, emb, prompt, pmel)
    counts, frames = [], []
    for start in (0, 2, 4, 6, 8):
        state, out = stream.step(split, state, tokens[:, start : start + 2], tokens[:, start + 2 : start + 5],
                                 final=start == 8)
        counts.append(int(out.lengths[0]))
        frames.append(np.asarray(out.mel[0, : counts[-1]]))
    assert counts == [2, 4, 4, 0, 8]  # new tokens emitted: 1, 2, 2, 0 (look-ahead 1 < 3), 4
    assert out.mel.shape == (1, stream.max_frames_per_step, 80) and not np.asarray(out.mel[0, 8:]).any()
    offline = token2mel(model, params, tokens, emb, prompt_tokens=prompt, prompt_mel=pmel, streaming=True,
                        n_steps=STEPS)
    _assert_rows_equal([np.concatenate(frames)], offline, [9], "P=5, C=2")


def _feed_row(stream, params, tokens, n, emb, prompt, pmel, plen, delay, steps):
    """One row's schedule over ``steps`` calls as a batch-1 stream: idle for ``delay`` calls, then C tokens per call
    with the look-ahead, final with its last chunk. Returns the per-call ``(tokens, lookahead, n, n_ahead, final)``."""
    c = stream.model.config.chunk_size
    calls = []
    for k in range(steps):
        start = (k - delay) * c
        if k < delay or start >= n:
            calls.append((np.zeros(c, np.int64), np.zeros(LOOKAHEAD, np.int64), 0, 0, start >= n))
            continue
        left = n - start
        calls.append((np.pad(tokens[start:start + c], (0, max(0, c - len(tokens[start:start + c])))),
                      np.pad(tokens[start + c:start + c + LOOKAHEAD], (0, LOOKAHEAD - len(tokens[start + c:start + c + LOOKAHEAD]))),
                      min(left, c), int(np.clip(left - c, 0, LOOKAHEAD)), left <= c))
    return calls


def test_stream_rows_at_different_positions_equal_each_alone():
    """8 streams with different prompts, lengths and start times (so different stream positions at every call) in
    one batched state: each equals the same stream run alone (1e-5), three of them their offline chunk-masked
    inference (1e-4); the batched step compiles once."""
    model, params = tiny_flow(chunk=2)
    c, b = 2, 8
    plens = np.array([0, 1, 2, 3, 4, 5, 3, 1])
    lengths = np.array([9, 4, 7, 2, 11, 6, 8, 5])
    delays = np.array([0, 2, 1, 0, 3, 1, 0, 2])
    tokens, emb, prompt, pmel = _data(21, b, int(lengths.max()), int(plens.max()))
    steps = int(max(delays + -(-lengths // c))) + 1
    window = 16
    stream = Token2MelStream(model, window_tokens=window, n_steps=STEPS)
    calls = [_feed_row(stream, params, tokens[i], lengths[i], emb[i], prompt[i], pmel[i], plens[i], delays[i], steps)
             for i in range(b)]
    state = stream.init(params, emb, prompt, pmel, prompt_lengths=plens)
    before = _advance._cache_size()
    outs = [[] for _ in range(b)]
    for k in range(steps):
        tok, ahead, n, na, fin = (np.array([calls[i][k][j] for i in range(b)]) for j in range(5))
        state, out = stream.step(params, state, tok, ahead, lengths=n, lookahead_lengths=na, final=fin.astype(bool))
        for i in range(b):
            outs[i].append(np.asarray(out.mel[i, : int(out.lengths[i])]))
    assert _advance._cache_size() - before <= 1
    assert state.ended.all()
    batched = [np.concatenate(o) for o in outs]
    # Each row alone: batch 1, no idle calls, its prompt padded to the batch's widest with its own prompt length (one
    # init shape for all rows). Its offline chunk-masked inference, on the unpadded prompt and tokens, is checked for
    # the rows without a prompt, with the longest tokens and with the widest, unaligned prompt (each offline call of
    # another shape is a compilation; stream vs offline over aligned and unaligned prompts is
    # test_stream_equals_offline_chunk_masked's).
    offline_rows = {int(np.argmin(plens)), int(np.argmax(lengths)), int(np.argmax(plens))}
    assert len(offline_rows) == 3
    for i in range(b):
        alone_state = stream.init(params, emb[i:i + 1], prompt[i:i + 1], pmel[i:i + 1], prompt_lengths=plens[i:i + 1])
        frames = []
        for tok, ahead, n, na, fin in calls[i][delays[i]:]:
            if n == 0 and not fin:
                continue
            alone_state, out = stream.step(params, alone_state, tok[None], ahead[None], lengths=np.array([n]),
                                           lookahead_lengths=np.array([na]), final=bool(fin))
            frames.append(np.asarray(out.mel[0, : int(out.lengths[0])]))
            if fin:
                break
        alone = np.concatenate(frames)
        assert batched[i].shape == alone.shape == (2 * lengths[i], 80)
        err = float(np.abs(batched[i] - alone).max())
        assert err < 1e-5, f"row {i}: batched vs alone max abs error {err:.3g} (tol 1e-5)"
        if i not in offline_rows:
            continue
        offline = token2mel(model, params, tokens[i:i + 1, : lengths[i]], emb[i:i + 1],
                            prompt_tokens=prompt[i:i + 1, : plens[i]] if plens[i] else None,
                            prompt_mel=pmel[i:i + 1, : 2 * plens[i]] if plens[i] else None, streaming=True,
                            n_steps=STEPS)
        _assert_rows_equal([batched[i]], offline, [lengths[i]], f"row {i} offline")


def test_stream_contracts():
    """The look-ahead must equal the tokens that follow (error names row and position); a consumed state and a
    state of another stream configuration are rejected."""
    model, params = tiny_flow(chunk=2)
    stream = Token2MelStream(model, window_tokens=8, n_steps=STEPS)
    emb = np.ones((2, 12), np.float32)
    state = stream.init(params, emb)
    state, _ = stream.step(params, state, np.array([[1, 2], [3, 4]]), np.array([[5, 6, 7], [8, 9, 10]]))
    with pytest.raises(ValueError, match=r"tokens: row 1, stream position 3: got token 11, but the look-ahead"):
        stream.step(params, state, np.array([[5, 6], [8, 11]]), np.array([[7, 1, 1], [10, 1, 1]]))
    with pytest.raises(ValueError, match=r"lookahead: row 0, stream position 4: got token 9"):
        stream.step(params, state, np.array([[5, 6], [8, 9]]), np.array([[9, 1, 1], [10, 1, 1]]))
    new, _ = stream.step(params, state, np.array([[5, 6], [8, 9]]), np.array([[7, 1, 1], [10, 1, 1]]))
    with pytest.raises(ValueError, match="state: already consumed"):
        stream.step(params, state, np.array([[7, 1], [10, 1]]))
    other = Token2MelStream(model, window_tokens=10, n_steps=STEPS)
    with pytest.raises(ValueError, match="state: made by another stream configuration"):
        other.step(params, new, np.array([[7, 1], [10, 1]]))
    with pytest.raises(ValueError, match="embedding: expected finite values"):
        stream.init(params, np.full((2, 12), np.nan, np.float32))
    with pytest.raises(ValueError, match="prompt_mel: expected finite values"):
        stream.init(params, emb, np.ones((2, 1), np.int64), np.full((2, 2, 80), np.inf, np.float32))
    with pytest.raises(ValueError, match="noise: expected finite values"):
        stream.init(params, emb, noise=np.full((100, 80), np.nan, np.float32))
    with pytest.raises(ValueError, match="noise: a table of 3 frames"):
        stream.init(params, emb, noise=np.zeros((3, 80), np.float32))


def test_stream_bad_input():
    model, params = tiny_flow(chunk=2)
    stream = Token2MelStream(model, window_tokens=8, n_steps=STEPS)
    emb = np.ones((2, 12), np.float32)
    state = stream.init(params, emb)  # no prompt: nothing is computed yet
    ok = np.ones((2, 2), np.int64)
    with pytest.raises(ValueError, match=r"tokens: 1 id\(s\) outside the vocabulary \[0, 50\)"):
        stream.step(params, state, np.array([[1, 2], [3, 50]]), ok)
    with pytest.raises(ValueError, match=r"lookahead: 1 id\(s\) outside the vocabulary"):
        stream.step(params, state, ok, np.array([[1, -1, 2], [1, 2, 3]]))
    with pytest.raises(ValueError, match=r"tokens: expected shape \[2, <= 2\]"):
        stream.step(params, state, np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"lookahead: expected shape \[2, <= 3\]"):
        stream.step(params, state, ok, np.ones((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 2\]"):
        stream.step(params, state, ok, lengths=np.array([3, 1]))
    with pytest.raises(TypeError, match="state: expected a StreamState"):
        stream.step(params, tuple(state), ok)
    ended = state._replace(ended=np.array([True, False]))
    with pytest.raises(ValueError, match=r"rows \[0\] have ended"):
        stream.step(params, ended, ok)
    late = state._replace(received=np.array([14999, 0]))
    with pytest.raises(ValueError, match="past the noise table"):
        stream.step(params, late, ok)
    with pytest.raises(ValueError, match=r"prompt_mel: expected shape \(2, 4, 80\)"):
        stream.init(params, emb, ok, np.zeros((2, 3, 80), np.float32))
    with pytest.raises(ValueError, match=r"embedding: expected a speaker embedding of shape \[2, 12\]"):
        stream.init(params, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"grid: expected 4 times"):
        stream.init(params, emb, grid=np.linspace(0, 1, 6))
    with pytest.raises(ValueError, match="window_tokens: expected an int >= one chunk"):
        Token2MelStream(model, window_tokens=1)
    with pytest.raises(ValueError, match="window_tokens: num_left_chunks = 1 needs at least 4"):
        Token2MelStream(tiny_flow(chunk=2, left=1)[0], window_tokens=3)
    assert isinstance(state, StreamState)
