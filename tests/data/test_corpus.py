"""The shipped corpus and the corpus format's validation (bad records skipped or raised, as documented)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fmjax import audio
from fmjax.data import corpus as corpus_lib


@pytest.fixture(scope="module")
def shipped():
    return corpus_lib.load_corpus()


def test_load_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = corpus_lib.load_corpus()
    assert corpus.root == corpus_lib.DEFAULT_CORPUS and len(corpus.train) > 0


def test_shipped_corpus_every_record_valid(shipped):
    c = shipped
    assert c.skipped == () and c.meta["skipped"] == []
    assert len(c.speakers) >= 6 and c.spk_embeddings.shape == (len(c.speakers), 192)
    assert len(c.train) + len(c.valid) >= 300 and len(c.valid) >= 2 * len(c.speakers)
    assert c.config == audio.MelConfig()
    ids = [u.id for u in c.train + c.valid]
    assert len(set(ids)) == len(ids)
    for u in c.train + c.valid:
        assert u.mel.dtype == np.float32 and u.mel.shape[1] == 80 and np.all(np.isfinite(u.mel))
        assert u.tokens.dtype == np.int32 and u.mel.shape[0] == 2 * u.tokens.shape[0] > 0
        assert 0 <= u.tokens.min() and u.tokens.max() < c.vocab_size
        assert u.mel.min() >= np.float32(np.float16(np.log(1e-5)))  # the front-end's floor, as stored (float16)
        np.testing.assert_array_equal(u.spk, c.spk_embeddings[c.speakers.index(u.speaker)])
    for s in c.speakers:  # every speaker has training and validation utterances
        assert any(u.speaker == s for u in c.train) and any(u.speaker == s for u in c.valid)
    assert len(np.unique(np.round(c.spk_embeddings, 4), axis=0)) == len(c.speakers)


def test_shipped_corpus_fits_the_size_budget():
    size = sum(p.stat().st_size for p in corpus_lib.DEFAULT_CORPUS.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"data/corpus is {size / 2**20:.2f} MiB"


def test_shipped_wavs_reproduce_the_stored_mels(shipped):
    """The reference FLACs are the 16-bit signals the mels were computed from: recomputing the log-mel and
    rounding to float16 (the storage precision) reproduces the stored mel to within one float16 step."""
    with_wav = [u for u in shipped.valid if u.wav is not None]
    assert len(with_wav) == len(shipped.valid)
    for u in with_wav[::8]:
        wav, sr = audio.load_wav(u.wav, 24000)
        mel = np.asarray(audio.log_mel(wav))[: u.frames]
        assert np.asarray(audio.log_mel(wav)).shape[0] in (u.frames, u.frames + 1)
        step = np.spacing(np.abs(u.mel).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(mel.astype(np.float16).astype(np.float32) - u.mel) <= step), u.id


# --- the format's validation ---------------------------------------------------------------------------
def _write(root, records, mels, tokens, *, config=audio.MelConfig(n_mels=4), vocab=10):
    spk = {"a": np.ones(192, np.float32), "b": -np.ones(192, np.float32)}
    corpus_lib.save_corpus(root, config=config, vocab_size=vocab, speakers=spk, records=records, mels=mels,
                           tokens=tokens)


def _good(uid, speaker="a", split="train", n=3):
    rng = np.random.default_rng(len(uid))
    record = {"id": uid, "speaker": speaker, "text": uid, "split": split}
    return record, rng.standard_normal((2 * n, 4)), np.arange(n) % 10


def _bad_corpus(root):
    recs, mels, toks = zip(
        _good("ok1"),
        _good("ok2", "b", "valid"),
        ({"id": "mismatch", "speaker": "a", "text": "", "split": "train"}, np.zeros((7, 4)), np.zeros(3)),
        ({"id": "empty", "speaker": "a", "text": "", "split": "train"}, np.zeros((0, 4)), np.zeros(0)),
        ({"id": "oov", "speaker": "b", "text": "", "split": "train"}, np.zeros((4, 4)), np.array([1, 12])),
        ({"id": "who", "speaker": "zed", "text": "", "split": "train"}, np.zeros((4, 4)), np.array([1, 2])),
        ({"id": "nan", "speaker": "a", "text": "", "split": "valid"}, np.full((2, 4), np.nan), np.array([1])),
        _good("ok1"),
    )
    _write(root, list(recs), list(mels), list(toks))


def test_bad_records_are_skipped_with_logged_reasons(tmp_path, caplog):
    _bad_corpus(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fmjax.data.corpus"):
        c = corpus_lib.load_corpus(tmp_path, config=audio.MelConfig(n_mels=4))
    assert [u.id for u in c.train] == ["ok1"] and [u.id for u in c.valid] == ["ok2"]
    reasons = dict(c.skipped)
    assert "token/mel length mismatch" in reasons["mismatch"]
    assert "empty utterance" in reasons["empty"]
    assert "outside [0, 10)" in reasons["oov"]
    assert "unknown speaker" in reasons["who"]
    assert "non-finite" in reasons["nan"]
    assert len(c.skipped) == 6 and c.skipped[-1] == ("ok1", "duplicate id")
    assert sum("skipping utterance" in r.message for r in caplog.records) == 6
    np.testing.assert_allclose(c.valid[0].spk, -1.0)


def test_bad_records_raise_when_strict(tmp_path):
    _bad_corpus(tmp_path)
    with pytest.raises(ValueError, match="'mismatch'.*token/mel length mismatch"):
        corpus_lib.load_corpus(tmp_path, config=audio.MelConfig(n_mels=4), strict=True)


def test_corpus_level_problems_raise(tmp_path):
    recs, mels, toks = zip(_good("u1"), _good("u2", "b"))
    _write(tmp_path / "sr", list(recs), list(mels), list(toks), config=audio.MelConfig(sample_rate=22050, n_mels=4))
    with pytest.raises(ValueError, match="sample rate 22050 Hz.*expected.*sample rate 24000 Hz"):
        corpus_lib.load_corpus(tmp_path / "sr", config=audio.MelConfig(n_mels=4))
    assert len(corpus_lib.load_corpus(tmp_path / "sr", config=None).train) == 2  # config=None accepts it

    _write(tmp_path / "len", list(recs), list(mels), list(toks))
    index = json.loads((tmp_path / "len" / "index.json").read_text())
    index["utterances"][0]["frames"] += 2
    (tmp_path / "len" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="features.npz: expected mel"):
        corpus_lib.load_corpus(tmp_path / "len", config=None)

    index["format"] = "something-else"
    (tmp_path / "len" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a corpus index"):
        corpus_lib.load_corpus(tmp_path / "len", config=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus_lib.load_corpus(tmp_path / "nowhere")
