"""UpsampleConformerEncoder / TokenEmbedding / EncoderConfig: bad input raises a clear error naming the argument."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.models.encoder import EncoderConfig, TokenEmbedding, UpsampleConformerEncoder, check_token_ids
from tests.models.test_encoder import TINY, tiny_encoder


@pytest.fixture(scope="module")
def tiny():
    return tiny_encoder()


def _zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=_zeros(2, 7, 8)), ValueError, r"x: expected token embeddings of shape \[b, t, 16\], got \(2, 7, 8\)"),
        (dict(x=_zeros(7, 16)), ValueError, r"x: expected token embeddings of shape"),
        (dict(x=_zeros(2, 7, 16, dtype=np.int32)), TypeError, r"x: expected a floating dtype, got int32"),
        (dict(mask=_zeros(2, 6)), ValueError, r"mask: expected lengths of shape \[2\] or a mask of shape \[2, 7\]"),
        (dict(mask=np.array([7.0, 5.0])), TypeError, r"mask: lengths must be integers"),
        (dict(context=_zeros(2, 4, 16)), ValueError, r"context: expected shape \[2, <= 3, 16\], got \(2, 4, 16\)"),
        (dict(context=_zeros(2, 3, 8)), ValueError, r"context: expected shape"),
        (
            dict(context=_zeros(2, 3, 16), context_lengths=np.array([3])),
            ValueError,
            r"context_lengths: expected shape \[2\]",
        ),
        (dict(chunk_masked=jnp.array(True)), TypeError, r"chunk_masked: expected a Python bool"),
    ],
)
def test_encoder_offline_bad_input(tiny, kwargs, error, match):
    model, params = tiny
    kwargs = {"x": _zeros(2, 7, 16), **kwargs}
    x = kwargs.pop("x")
    with pytest.raises(error, match=match):
        model.apply(params, x, **kwargs)


def test_encoder_stream_chunk_longer_than_chunk_size(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"x: a streaming chunk holds at most static_chunk_size = 5 tokens, got 6"):
        model.apply(params, _zeros(1, 6, 16), cache=model.init_cache(1, 10))


def test_encoder_stream_batch_mismatch(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"cache: made for batch 2, but x has batch 3"):
        model.apply(params, _zeros(3, 5, 16), cache=model.init_cache(2, 10))


def test_encoder_stream_cache_of_another_config(tiny):
    model, params = tiny
    deeper = UpsampleConformerEncoder(dataclasses.replace(TINY, num_blocks=3))
    with pytest.raises(ValueError, match=r"cache: its structure does not match init_cache"):
        model.apply(params, _zeros(1, 5, 16), cache=deeper.init_cache(1, 10))
    wider = UpsampleConformerEncoder(dataclasses.replace(TINY, lookahead_channels=8))
    with pytest.raises(ValueError, match=r"cache\.lookahead\.history: expected float32\[1, 2, 24\] \(batch 1, window 10\), got float32\[1, 2, 8\]"):
        model.apply(params, _zeros(1, 5, 16), cache=wider.init_cache(1, 10))
    with pytest.raises(TypeError, match=r"cache: expected an EncoderCache"):
        model.apply(params, _zeros(1, 5, 16), cache=tuple(model.init_cache(1, 10)))


def test_encoder_init_cache_bad_window(tiny):
    model, _ = tiny
    too_small = r"window_tokens: expected an int >= one chunk \(static_chunk_size = 5\), got 4"
    with pytest.raises(ValueError, match=too_small):
        model.init_cache(1, 4)
    with pytest.raises(ValueError, match=r"window_tokens: required when num_left_chunks = -1"):
        model.init_cache(1)
    limited = UpsampleConformerEncoder(dataclasses.replace(TINY, num_left_chunks=1))
    with pytest.raises(ValueError, match=r"window_tokens: num_left_chunks = 1 needs at least \(L \+ 1\)·C = 10 slots"):
        limited.init_cache(1, 9)
    assert limited.init_cache(1).encoders[0].pos.shape == (1, 10)  # default (L + 1)·C


def test_token_embedding_rejects_out_of_vocabulary_ids():
    emb = TokenEmbedding(vocab_size=10, dim=4)
    params = {"params": {"embedding": np.arange(40, dtype=np.float32).reshape(10, 4)}}
    tokens = np.array([[1, 9, 10, 3]])
    with pytest.raises(ValueError, match=r"tokens: 1 id\(s\) outside the vocabulary \[0, 10\) .* tokens\[0, 2\] = 10"):
        emb.apply(params, tokens)
    with pytest.raises(ValueError, match=r"first tokens\[0, 0\] = -1"):
        check_token_ids(np.array([[-1, 2]]), 10)
    # Padded positions may hold anything (e.g. -1); they embed to zeros, as torch's clamp + mask.
    out = emb.apply(params, np.array([[1, 9, -1, 12]]), np.array([2]))
    np.testing.assert_array_equal(np.asarray(out[0, :2]), params["params"]["embedding"][[1, 9]])
    np.testing.assert_array_equal(np.asarray(out[0, 2:]), np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"tokens: expected integer ids, got dtype float32"):
        emb.apply(params, np.array([[1.0, 2.0]], np.float32))


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(input_size=32), r"EncoderConfig.input_size: must equal output_size \(16\)"),
        (dict(heads=3), r"EncoderConfig.output_size: expected a multiple of 2·heads = 6, got 16"),
        (dict(static_chunk_size=0), r"EncoderConfig.static_chunk_size: expected a positive int, got 0"),
        (dict(num_left_chunks=-2), r"EncoderConfig.num_left_chunks: expected -1 \(all\) or >= 0, got -2"),
        (dict(num_blocks=-1), r"EncoderConfig.num_blocks: expected an int >= 0, got -1"),
    ],
)
def test_encoder_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **changes)


def test_encoder_default_config_is_cosyvoice2():
    cfg = EncoderConfig()
    assert (cfg.output_size, cfg.heads, cfg.linear_units, cfg.num_blocks, cfg.num_up_blocks) == (512, 8, 2048, 6, 4)
    assert (cfg.pre_lookahead_len, cfg.static_chunk_size, cfg.num_left_chunks, cfg.upsample_stride) == (3, 25, -1, 2)
    assert (cfg.embed_eps, cfg.layer_eps) == (1e-5, 1e-12)
