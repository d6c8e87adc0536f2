"""k-means speech tokenizer: Lloyd's objective, k-means++ seeding, deterministic encoding, the shipped centroids."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fmjax.data import corpus as corpus_lib
from fmjax.data.tokenizer import SpeechTokenizer, fit_kmeans, kmeans_plus_plus, lloyd, pair_frames


def _blobs(n=600, d=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((k, d))
    return (centres[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_lloyd_objective_never_increases():
    x = _blobs()
    _, objective = fit_kmeans(x, 8, jax.random.key(0), n_iter=25)
    objective = np.asarray(objective, np.float64)
    assert objective.shape == (26,)
    steps = np.diff(objective)
    assert np.all(steps <= 1e-6 * objective[:-1]), steps.max()  # monotone up to float32 rounding (rel 1e-6)
    assert objective[-1] < 0.9 * objective[0]


def test_lloyd_objective_is_the_mean_squared_distance():
    x = _blobs(seed=1)
    init = kmeans_plus_plus(x, 4, jax.random.key(3))
    centres, objective = lloyd(x, init, 3)
    d = ((x[:, None, :].astype(np.float64) - np.asarray(centres, np.float64)[None]) ** 2).sum(-1).min(1).mean()
    np.testing.assert_allclose(float(objective[-1]), d, rtol=1e-5)


def test_kmeans_plus_plus_picks_data_points_deterministically():
    x = _blobs(seed=2)
    a = np.asarray(kmeans_plus_plus(x, 6, jax.random.key(1)))
    b = np.asarray(kmeans_plus_plus(x, 6, jax.random.key(1)))
    c = np.asarray(kmeans_plus_plus(x, 6, jax.random.key(2)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert all(np.any(np.all(x == row, axis=1)) for row in a)  # every seed is a data point
    assert len({tuple(r) for r in a}) == 6  # no point is picked twice


def _small_tokenizer():
    rng = np.random.default_rng(4)
    mels = [rng.standard_normal((int(t), 8)).astype(np.float32) for t in (41, 30, 57)]
    tok, objective = SpeechTokenizer.fit(mels, 6, jax.random.key(0), n_iter=10)
    return tok, mels


def test_encode_is_nearest_centroid_and_deterministic():
    tok, mels = _small_tokenizer()
    mel = mels[0]  # 41 frames: the odd last frame is dropped
    tokens = np.asarray(tok.encode(mel))
    assert tokens.shape == (20,) and tokens.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(tok.encode(mel)), tokens)
    feats = (mel[:40].reshape(20, 16).astype(np.float64) - tok.mean) / tok.std
    brute = ((feats[:, None, :] - tok.centroids[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(tokens, brute)
    batch = np.stack([mels[2][:40], mel[:40]])
    np.testing.assert_array_equal(np.asarray(tok.encode(batch))[1], tokens)
    assert tok.vocab_size == 6 and tok.n_mels == 8


def test_pair_frames_layout():
    mel = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    np.testing.assert_array_equal(np.asarray(pair_frames(mel)), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])


def test_save_load_round_trip(tmp_path):
    tok, mels = _small_tokenizer()
    tok.save(tmp_path / "tok.npz")
    back = SpeechTokenizer.load(tmp_path / "tok.npz")
    for name in ("centroids", "mean", "std"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tok, name))
    np.testing.assert_array_equal(np.asarray(back.encode(mels[1])), np.asarray(tok.encode(mels[1])))
    np.savez(tmp_path / "other.npz", centroids=tok.centroids)
    with pytest.raises(ValueError, match="not a speech tokenizer"):
        SpeechTokenizer.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        SpeechTokenizer.load(tmp_path / "missing.npz")


def test_encode_and_fit_reject_bad_input():
    tok, _ = _small_tokenizer()
    with pytest.raises(ValueError, match=r"mel: expected shape \[..., t, 8\]"):
        tok.encode(np.zeros((10, 80), np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        tok.encode(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="k: expected an int"):
        fit_kmeans(np.zeros((3, 2), np.float32), 5, jax.random.key(0))


def test_shipped_centroids_reproduce_the_shipped_tokens():
    corpus = corpus_lib.load_corpus()
    tok = SpeechTokenizer.load(corpus.tokenizer_path)
    assert tok.vocab_size == corpus.vocab_size == 256 and tok.n_mels == 80
    for utt in corpus.valid[::8]:  # one validation utterance per 8: each new length compiles once
        np.testing.assert_array_equal(np.asarray(tok.encode(utt.mel)), utt.tokens, err_msg=utt.id)
