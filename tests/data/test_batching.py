"""Length-bucketed batches: static shapes, masks, seeded order, exact resumption."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from fmjax.data import corpus as corpus_lib
from fmjax.data.batching import BucketedBatches, collate, default_buckets


def _utts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [
        SimpleNamespace(id=f"u{i}", mel=rng.standard_normal((2 * n, 5)).astype(np.float32),
                        tokens=rng.integers(0, 50, n).astype(np.int32), spk=np.full(3, i, np.float32),
                        speaker_index=i % 4)
        for i, n in enumerate(lengths)
    ]


LENGTHS = [3, 5, 8, 8, 2, 11, 7, 16, 4, 9, 12, 6, 15, 1, 10, 13, 14, 8, 5, 7, 3, 12, 9, 16]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_batches_have_static_shapes_masks_and_contents():
    utts = _utts(LENGTHS)
    it = BucketedBatches(utts, batch_size=3, buckets=(4, 8, 16), seed=1)
    assert it.shapes == ((3, 8), (3, 16), (3, 32))
    for pos in range(2 * it.batches_per_epoch):
        b = it[pos]
        assert (b.mel.shape[0], b.mel.shape[1]) in it.shapes and b.mel.shape[2] == 5
        assert b.tokens.shape == (3, b.mel.shape[1] // 2) and b.spk.shape == (3, 3)
        np.testing.assert_array_equal(b.mel_len, 2 * b.token_len)
        np.testing.assert_array_equal(b.mel_mask.sum(1), b.mel_len)
        np.testing.assert_array_equal(b.token_mask.sum(1), b.token_len)
        np.testing.assert_array_equal(b.row_mask, 1.0)
        assert np.all(b.mel[b.mel_mask == 0] == 0) and np.all(b.tokens[b.token_mask == 0] == 0)
        bucket = b.tokens.shape[1]
        for r, i in enumerate(b.index):
            u = utts[i]
            n = u.tokens.shape[0]
            assert n <= bucket and (bucket == 4 or n > bucket // 2)  # the smallest bucket that holds it
            np.testing.assert_array_equal(b.mel[r, : 2 * n], u.mel)
            np.testing.assert_array_equal(b.tokens[r, :n], u.tokens)
            np.testing.assert_array_equal(b.spk[r], u.spk)
            assert b.speaker[r] == u.speaker_index


def test_each_epoch_uses_each_utterance_at_most_once():
    utts = _utts(LENGTHS)
    it = BucketedBatches(utts, batch_size=3, buckets=(4, 8, 16), seed=5)
    assert it.batches_per_epoch == sum(it.batches_per_bucket) == 1 + 2 + 3  # floor(bucket sizes 5, 8, 11 / 3)
    for epoch in range(3):
        seen = np.concatenate([it[epoch * it.batches_per_epoch + j].index for j in range(it.batches_per_epoch)])
        assert len(set(seen.tolist())) == seen.size == 3 * it.batches_per_epoch


def test_order_is_deterministic_given_the_seed():
    utts = _utts(LENGTHS)
    a = [BucketedBatches(utts, 3, (4, 8, 16), seed=7)[p] for p in range(12)]
    b = [BucketedBatches(utts, 3, (4, 8, 16), seed=7)[p] for p in range(12)]
    c = [BucketedBatches(utts, 3, (4, 8, 16), seed=8)[p] for p in range(12)]
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x.index, y.index) for x, y in zip(a, c))
    epochs = [np.concatenate([x.index for x in a[:6]]), np.concatenate([x.index for x in a[6:]])]
    assert not np.array_equal(epochs[0], epochs[1])  # a new shuffle every epoch


def test_iterator_resumes_exactly_from_a_saved_position():
    utts = _utts(LENGTHS)
    it = BucketedBatches(utts, 2, (4, 8, 16), seed=3)
    stream = it.iterate(0)
    straight = [next(stream) for _ in range(3 * it.batches_per_epoch + 2)]
    saved = 2 * it.batches_per_epoch - 1  # mid-run, one batch before an epoch boundary
    resumed = BucketedBatches(utts, 2, (4, 8, 16), seed=3).iterate(saved)
    for want in straight[saved:]:
        assert _same(next(resumed), want)


def test_too_long_utterances_are_dropped_with_a_warning(caplog):
    utts = _utts([2, 3, 4, 20, 2, 30])
    with caplog.at_level(logging.WARNING, logger="fmjax.data.batching"):
        it = BucketedBatches(utts, 2, buckets=(4,), seed=0)
    assert "dropping 2 utterances longer than the largest bucket (4 tokens)" in caplog.text
    assert it.batches_per_epoch == 2
    assert all(i not in (3, 5) for p in range(6) for i in it[p].index)


def test_once_covers_every_utterance_with_filler_rows():
    utts = _utts(LENGTHS)
    it = BucketedBatches(utts, 5, (4, 8), seed=0)  # lengths 9..16 exceed the largest bucket
    batches = list(it.once())
    real = np.concatenate([b.index[b.row_mask == 1] for b in batches])
    assert sorted(real.tolist()) == list(range(len(utts)))
    for b in batches:
        assert b.mel.shape[0] == 5
        filler = b.row_mask == 0
        assert np.all(b.index[filler] == -1) and np.all(b.mel_len[filler] == 0) and np.all(b.mel_mask[filler] == 0)


def test_default_buckets_cover_the_data_and_the_shipped_corpus_batches():
    lengths = np.array(LENGTHS)
    buckets = default_buckets(lengths, n_buckets=3, multiple=4)
    assert buckets[-1] >= lengths.max() and len(buckets) <= 3 and all(b % 4 == 0 for b in buckets)
    corpus = corpus_lib.load_corpus()
    it = BucketedBatches(corpus.train, batch_size=8, seed=0)
    assert len(it.shapes) <= 4 and it.buckets[-1] >= max(u.tokens.shape[0] for u in corpus.train)
    b = it[0]
    assert b.mel.shape[0] == 8 and b.mel.shape[2] == 80 and b.spk.shape == (8, 192)


def test_bad_arguments_raise():
    utts = _utts([2, 3])
    with pytest.raises(ValueError, match="batch_size: no bucket has 3 utterances"):
        BucketedBatches(utts, 3, (4,))
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        BucketedBatches(utts, 0)
    with pytest.raises(ValueError, match="buckets: expected strictly increasing"):
        BucketedBatches(utts, 1, (8, 4))
    with pytest.raises(ValueError, match="position"):
        BucketedBatches(utts, 1, (4,))[-1]
    with pytest.raises(ValueError, match="token_length"):
        collate(utts, [1], 2)
