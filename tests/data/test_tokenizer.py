"""The speaker-normalised tokenizer: k-means pieces, features, deterministic encoding, both heads, the shipped file."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.fft

from fmjax.data import corpus as corpus_lib
from fmjax.data.tokenizer import (
    SpeechTokenizer,
    cepstra,
    fit_kmeans,
    kmeans_plus_plus,
    lloyd,
    pair_frames,
    speaker_statistics,
)


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


def _mels(seed=4, m=16):
    rng = np.random.default_rng(seed)
    mels = [rng.standard_normal((int(t), m)).astype(np.float32) for t in (41, 30, 57, 36)]
    mels[2] += 1.5  # speaker "b" sits elsewhere: its own statistics
    mels[3] = 2.0 * mels[3] + 1.5
    return mels, ["a", "a", "b", "b"]


def test_cepstra_are_scipys_orthonormal_dct():
    x = np.random.default_rng(0).normal(size=(7, 80))
    np.testing.assert_allclose(cepstra(x, 20), scipy.fft.dct(x, type=2, norm="ortho", axis=-1)[:, :20],
                               rtol=0, atol=1e-12)


def test_kmeans_head_is_the_nearest_centroid_of_speaker_normalised_pairs():
    mels, spk = _mels()
    tok, objective = SpeechTokenizer.fit(mels, spk, 6, jax.random.key(0), n_cepstra=5, n_iter=10)
    assert not tok.supervised and tok.context == 0 and tok.vocab_size == 6 and tok.speakers == ("a", "b")
    assert objective.shape == (11,) and objective[-1] < objective[0]
    # the statistics: mean/std of each speaker's cepstra over its frames
    c_b = np.concatenate([scipy.fft.dct(m, norm="ortho")[:, :5] for m in mels[2:]])
    np.testing.assert_allclose(tok.speaker_stats("b")[0], c_b.mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(tok.speaker_stats("b")[1], c_b.std(0), rtol=1e-5)
    mel = mels[2][:40]
    tokens = tok.encode(mels[2], "b")  # 57 frames: the odd last frame is dropped
    assert tokens.shape == (28,) and tokens.dtype == np.int32
    z = (scipy.fft.dct(mel.astype(np.float64), norm="ortho")[:, :5] - c_b.mean(0)) / c_b.std(0)
    feats = z.reshape(20, 10)  # frames 2u, 2u + 1 side by side
    centroids = tok.w2.T.astype(np.float64) / 2  # the linear head w2 = 2 C^T
    brute = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(tokens[:20], brute)


def test_encode_is_deterministic_and_speaker_forms_agree():
    mels, spk = _mels()
    tok, _ = SpeechTokenizer.fit(mels, spk, 6, jax.random.key(0), n_cepstra=5, n_iter=10)
    again, _ = SpeechTokenizer.fit(mels, spk, 6, jax.random.key(0), n_cepstra=5, n_iter=10)
    np.testing.assert_array_equal(again.w2, tok.w2)  # fitting is deterministic too
    t = tok.encode(mels[0], "a")
    np.testing.assert_array_equal(tok.encode(mels[0], "a"), t)
    np.testing.assert_array_equal(tok.encode(mels[0], tok.speaker_stats("a")), t)
    batch = np.stack([mels[2][:30], mels[1][:30]])
    np.testing.assert_array_equal(tok.encode(batch, ["b", "a"])[1], tok.encode(mels[1], "a"))
    own = tok.encode(mels[3], None)  # a voice not in the table: its own statistics
    c = cepstra(mels[3][:36], 5)
    np.testing.assert_array_equal(own, tok.encode(mels[3], (c.mean(0), c.std(0))))


def test_supervised_head_learns_the_labels_deterministically():
    mels, spk = _mels()
    mels = [m[: 2 * (m.shape[0] // 2)] for m in mels]
    labels = [(np.arange(m.shape[0] // 2) // 3) % 4 for m in mels]  # 4 classes, 3 tokens each in turn
    mels = [m + 3.0 * np.repeat(lab, 2)[:, None].astype(np.float32) for m, lab in zip(mels, labels)]  # audible
    tok, loss = SpeechTokenizer.fit(mels, spk, 4, jax.random.key(1), labels=labels, n_cepstra=4, context=1,
                                    hidden=16, steps=300)
    assert tok.supervised and tok.context == 1 and tok.feature_dim == 16 and loss.shape == (300,)
    acc = np.mean(np.concatenate([tok.encode(m, s) == lab for m, s, lab in zip(mels, spk, labels)]))
    assert acc > 0.9 and loss[-20:].mean() < 0.5 * loss[0], (acc, loss[0], loss[-20:].mean())
    again, _ = SpeechTokenizer.fit(mels, spk, 4, jax.random.key(1), labels=labels, n_cepstra=4, context=1,
                                   hidden=16, steps=300)
    np.testing.assert_array_equal(again.w1, tok.w1)


def test_pair_frames_layout():
    mel = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    np.testing.assert_array_equal(np.asarray(pair_frames(mel)), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])


def test_context_windows_repeat_the_edge_frames():
    mels, spk = _mels()
    tok, _ = SpeechTokenizer.fit(mels, spk, 3, jax.random.key(0), n_cepstra=2, context=1, n_iter=2)
    f = tok.features(mels[0][:6], "a")  # 3 tokens x (frames 2u-1 .. 2u+2) x 2 cepstra
    mean, std = tok.speaker_stats("a")
    z = (cepstra(mels[0][:6], 2) - mean) / std
    np.testing.assert_allclose(f[0], np.concatenate([z[0], z[0], z[1], z[2]]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(f[2], np.concatenate([z[3], z[4], z[5], z[5]]), rtol=0, atol=1e-12)


def test_save_load_round_trip(tmp_path):
    mels, spk = _mels()
    labels = [np.arange(m.shape[0] // 2) % 3 for m in mels]
    for tok in (SpeechTokenizer.fit(mels, spk, 5, jax.random.key(0), n_cepstra=4, n_iter=3)[0],
                SpeechTokenizer.fit(mels, spk, 3, jax.random.key(0), labels=labels, n_cepstra=4, hidden=8,
                                    steps=5)[0]):
        tok.save(tmp_path / "tok.npz")
        back = SpeechTokenizer.load(tmp_path / "tok.npz")
        assert back.speakers == tok.speakers and back.supervised == tok.supervised
        np.testing.assert_array_equal(back.encode(mels[1], "a"), tok.encode(mels[1], "a"))
    np.savez(tmp_path / "other.npz", centroids=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a speech tokenizer"):
        SpeechTokenizer.load(tmp_path / "other.npz")
    np.savez(tmp_path / "old.npz", format=np.array("fmjax-kmeans-speech-tokenizer"), centroids=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="old format.*re-make the corpus"):
        SpeechTokenizer.load(tmp_path / "old.npz")
    with pytest.raises(FileNotFoundError):
        SpeechTokenizer.load(tmp_path / "missing.npz")


def test_bad_input_names_the_argument():
    mels, spk = _mels()
    tok, _ = SpeechTokenizer.fit(mels, spk, 4, jax.random.key(0), n_cepstra=4, n_iter=2)
    with pytest.raises(ValueError, match=r"mel: expected shape \[t, 16\]"):
        tok.encode(np.zeros((10, 80), np.float32))
    with pytest.raises(ValueError, match="mel: expected at least 2 frames"):
        tok.encode(np.zeros((1, 16), np.float32))
    with pytest.raises(ValueError, match="mel: expected finite"):
        tok.encode(np.full((4, 16), np.nan, np.float32), "a")
    with pytest.raises(ValueError, match=r"speaker: expected one of the tokenizer's speakers \['a', 'b'\]"):
        tok.encode(mels[0], "zed")
    with pytest.raises(ValueError, match=r"speaker: expected a name, None or \(mean, std\) of shape \(4,\)"):
        tok.encode(mels[0], (np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="speaker: expected a list of 2 speakers"):
        tok.encode(np.stack([mels[0][:8]] * 2), ["a"])
    with pytest.raises(ValueError, match="speakers: expected one name per mel"):
        SpeechTokenizer.fit(mels, spk[:2], 4, jax.random.key(0))
    with pytest.raises(ValueError, match="labels: expected t // 2 labels per mel"):
        SpeechTokenizer.fit(mels, spk, 4, jax.random.key(0), labels=[np.zeros(3, int)] * 4, steps=1)
    with pytest.raises(ValueError, match="k: expected an int"):
        fit_kmeans(np.zeros((3, 2), np.float32), 5, jax.random.key(0))
    with pytest.raises(ValueError, match="mels_by_speaker: expected at least one mel"):
        speaker_statistics({"a": []})


# --- the shipped tokenizer --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    return corpus_lib.load_corpus()


def test_shipped_tokenizer_reproduces_every_shipped_token(shipped):
    """The stored tokens are exactly the tokenizer's output on the stored (float16-rounded) mels under each
    speaker's statistics: re-tokenising the ground truth gives a token error rate of 0 by construction."""
    tok = shipped.tokenizer()
    assert tok.vocab_size == shipped.vocab_size == 256 and tok.n_mels == 80 and tok.supervised
    assert set(tok.speakers) == set(shipped.speakers)
    for u in shipped.train + shipped.valid:
        np.testing.assert_array_equal(tok.encode(u.mel, u.speaker), u.tokens, err_msg=u.id)


def test_shipped_tokens_use_most_of_the_vocabulary(shipped):
    used = np.unique(np.concatenate([u.tokens for u in shipped.train]))
    assert used.size >= 230, used.size  # 243 of 256 measured (README); states of rare phones may never win
