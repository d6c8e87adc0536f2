"""UpsampleConformerEncoder offline: torch parity on the small CosyVoice2 flow fixture, chunk-mask semantics,
ragged batches, look-ahead context.

Semantic tests use a tiny random encoder (fewer layers and channels than the fixture) so that they compile fast;
rows of one batch are independent, so variants of an input are stacked into one call.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from fmjax.convert.encoder import convert_encoder
from fmjax.models.encoder import EncoderConfig, TokenEmbedding, UpsampleConformerEncoder
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.tokens import frame_mask
from tests.conftest import FIXTURES, load_fixture

TINY = EncoderConfig(
    input_size=16, output_size=16, heads=2, linear_units=32, num_blocks=2, num_up_blocks=2,
    lookahead_channels=24, static_chunk_size=5,
)


def tiny_encoder(seed: int = 0, **overrides):
    """``(model, params)``: the tiny config with random params (no compilation: shapes from ``eval_shape``).
    Biases and LayerNorm affines are random too, so a port that drops them would show."""
    model = UpsampleConformerEncoder(dataclasses.replace(TINY, **overrides))
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4, TINY.input_size), np.float32))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        x = rng.standard_normal(s.shape).astype(np.float32)
        if "kernel" in name:
            return x / np.sqrt(np.prod(s.shape[:-1]))
        return 1.0 + 0.2 * x if "scale" in name else 0.2 * x

    return model, jax.tree_util.tree_map_with_path(draw, shapes)


def run(model, params, x, *, chunk_masked=False, **arrays):
    """Jitted offline call; ``arrays`` (mask, context, context_lengths) are traced arguments; chunk masks as data
    (``ChunkSpec`` of the config's chunks). Returns ``(h, frame mask)``."""
    cfg = model.config
    chunk = ChunkSpec.chunked(x.shape[0], cfg.static_chunk_size, cfg.num_left_chunks) if chunk_masked else None
    h, cache = jax.jit(lambda p, x, a, c: model.apply(p, x, chunk=c, **a))(params, x, arrays, chunk)
    assert cache is None
    return h, frame_mask(arrays.get("mask"), x.shape[0], x.shape[1], cfg.upsample_stride)


def _x(seed, b, t, d=TINY.input_size):
    return np.random.default_rng(seed).standard_normal((b, t, d)).astype(np.float32)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_encoder_matches_torch_fixture(jit):
    conv = convert_encoder(FIXTURES / "flow_small_state_dict.npz", static_chunk_size=5, preset="cosyvoice2")
    f = load_fixture("flow_infer_full.npz")
    tokens = np.concatenate([f["in/prompt_token"], f["in/token"]], axis=1)  # [1, 27]
    emb = TokenEmbedding(conv.vocab_size, conv.config.input_size).apply(conv.token_params, tokens)
    model = UpsampleConformerEncoder(conv.config)
    fn = jax.jit(model.apply) if jit else model.apply
    h, cache = fn(conv.params, emb)
    assert cache is None
    mask = frame_mask(None, *emb.shape[:2], 2)
    ref = f["aux/encoder_out"]  # (1, 54, 64), time-major already
    assert h.shape == ref.shape == (1, 54, 64)
    err = float(np.abs(np.asarray(h) - ref).max())
    assert err < 1e-4, f"max abs error vs torch encoder_out {err:.3g} (tol 1e-4)"
    np.testing.assert_array_equal(np.asarray(mask), np.ones((1, 54), np.float32))


def test_encoder_chunk_mask_earlier_chunks_ignore_later_tokens():
    """With chunk masks, frames of chunk j depend on tokens < (j+1)·C + L only (C = 5, L = 3 look-ahead)."""
    model, params = tiny_encoder()
    c, la = 5, 3
    x = _x(0, 1, 17)
    variants = [x[0]]
    for p in (c + la, 2 * c + la, c + la - 1):  # chunk 0's reach ends at 8, chunk 1's at 13; 7 is inside
        v = x[0].copy()
        v[p:] += 1.0
        variants.append(v)
    h, _ = run(model, params, np.stack(variants), chunk_masked=True)
    h = np.asarray(h)
    for row, p in ((1, c + la), (2, 2 * c + la)):
        keep = 2 * (p - la)  # frames of the chunks whose reach ends before p
        same = float(np.abs(h[row, :keep] - h[0, :keep]).max())
        assert same < 1e-5, f"frames before {keep} changed by {same:.3g} (tol 1e-5) after perturbing tokens >= {p}"
        changed = float(np.abs(h[row, keep : keep + 2 * c] - h[0, keep : keep + 2 * c]).max())
        assert changed > 1e-2, f"the next chunk should see tokens >= {p}; it changed only by {changed:.3g}"
    # The look-ahead reaches exactly L tokens into the next chunk: token C + L - 1 changes chunk 0.
    assert float(np.abs(h[3, : 2 * c] - h[0, : 2 * c]).max()) > 1e-2


def test_encoder_full_context_sees_later_tokens():
    """Without chunk masks the first frames depend on the last token (so the chunk test above can fail)."""
    model, params = tiny_encoder()
    x = _x(1, 1, 17)
    x2 = x.copy()
    x2[:, -1] += 1.0
    h, _ = run(model, params, np.concatenate([x, x2]))
    assert float(np.abs(np.asarray(h[1, :2]) - np.asarray(h[0, :2])).max()) > 1e-3


def test_encoder_chunk_at_least_length_equals_full_context():
    model, params = tiny_encoder()
    x = _x(2, 2, 11)
    lengths = np.array([11, 8])
    full, m_full = run(model, params, x, mask=lengths)
    long_chunk = UpsampleConformerEncoder(dataclasses.replace(TINY, static_chunk_size=11))
    chunked, m_chunk = run(long_chunk, params, x, mask=lengths, chunk_masked=True)
    err = float(np.abs(np.asarray(full) - np.asarray(chunked)).max())
    assert err < 1e-5, f"chunk >= length differs from full context by {err:.3g} (tol 1e-5)"
    np.testing.assert_array_equal(np.asarray(m_full), np.asarray(m_chunk))


def test_encoder_ragged_row_equals_row_alone_with_padding_as_context():
    """As torch: padded keys are masked, but the look-ahead conv of a shorter row reads its (embedded) padding,
    so the row equals the same row run alone with those 3 padding frames given as ``context``."""
    model, params = tiny_encoder()
    x = _x(3, 2, 14)
    lengths = np.array([14, 9])
    h, mask = run(model, params, x, mask=lengths, chunk_masked=True)
    expected_mask = (np.arange(28)[None] < 2 * lengths[:, None]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(mask), expected_mask)
    alone, _ = run(model, params, x[1:, :9], chunk_masked=True, context=x[1:, 9:12])
    err = float(np.abs(np.asarray(h[1, :18]) - np.asarray(alone[0])).max())
    assert err < 1e-5, f"ragged row vs row alone: {err:.3g} (tol 1e-5)"
    # A [b, t] 0/1 mask means the same as lengths.
    h_mask, _ = run(model, params, x, mask=expected_mask[:, ::2], chunk_masked=True)
    assert float(np.abs(np.asarray(h_mask) - np.asarray(h)).max()) < 1e-6


def test_encoder_context_is_zero_padded_after_embedding():
    """``context`` rows shorter than L (by shape or ``context_lengths``) are zero-padded after the embedding;
    no context = 3 zero frames (torch's finalize)."""
    model, params = tiny_encoder()
    x = np.repeat(_x(4, 1, 8), 3, axis=0)
    ctx = _x(5, 3, 3)
    none, _ = run(model, params, x)
    by_length, _ = run(model, params, x, context=ctx, context_lengths=np.array([0, 2, 3]))
    by_shape, _ = run(model, params, x, context=ctx[:, :2])
    none, by_length, by_shape = (np.asarray(a) for a in (none, by_length, by_shape))
    assert float(np.abs(by_length[0] - none[0]).max()) < 1e-6
    assert float(np.abs(by_length[1] - by_shape[1]).max()) < 1e-6
    assert float(np.abs(by_length[2] - by_length[1]).max()) > 1e-3  # the third frame matters
    assert float(np.abs(by_length[1] - none[1]).max()) > 1e-3
