"""A folder of wavs -> a corpus: resampling, the skip/reject policy for bad audio, the CLI."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fmjax import audio
from fmjax.data import corpus as corpus_lib
from fmjax.data import prepare
from fmjax.data.tokenizer import SpeechTokenizer, speaker_statistics

SECONDS = 0.6  # every usable file lasts 0.6 s (14400 samples at 24 kHz), so log_mel compiles once


def _voice(sr, f0, seed):
    t = np.arange(int(SECONDS * sr)) / sr
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.28)) / h for h in range(1, 12) if f0 * h < sr / 2)
    return (0.2 * x * np.hanning(t.size) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def wav_dir(tmp_path):
    d = tmp_path / "wavs"
    for k in range(3):
        audio.save_wav(d / "a" / f"{k}.wav", _voice(24000, 110 + 10 * k, k), 24000)
    audio.save_wav(d / "b" / "0.wav", _voice(24000, 220, 10), 24000)
    audio.save_wav(d / "b" / "1.wav", _voice(24000, 240, 11), 24000)
    audio.save_wav(d / "b" / "2.wav", _voice(22050, 260, 12), 22050)  # resampled
    audio.save_wav(d / "b" / "low.wav", _voice(8000, 200, 13), 8000)  # below the 16 kHz minimum
    (d / "a" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")  # unreadable
    audio.save_wav(d / "a" / "short.wav", np.zeros(300, np.float32), 24000)  # shorter than one token
    (d / "a" / "0.txt").write_text("hello there\n")
    return d


def test_prepare_resamples_and_skips_bad_audio(wav_dir, tmp_path, caplog):
    out = tmp_path / "corpus"
    with caplog.at_level(logging.WARNING, logger="fmjax.data.prepare"):
        index = prepare.prepare_corpus(wav_dir, out, valid_per_speaker=1, progress=False)
    assert sum(r.message.startswith("skipping") for r in caplog.records) == 3
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert set(reasons) == {"a/broken.wav", "a/short.wav", "b/low.wav"}
    assert "unreadable audio" in reasons["a/broken.wav"]
    assert "empty or too short" in reasons["a/short.wav"]
    assert "8000 Hz is below the minimum 16000 Hz" in reasons["b/low.wav"]
    rates = {u["id"]: u["source_sample_rate"] for u in index["utterances"]}
    assert rates == {"a/0": 24000, "a/1": 24000, "a/2": 24000, "b/0": 24000, "b/1": 24000, "b/2": 22050}

    corpus = corpus_lib.load_corpus(out)
    assert corpus.skipped == () and len(corpus.train) == 4 and len(corpus.valid) == 2
    assert corpus.speakers == ("a", "b") and corpus.vocab_size == 256
    utts = {u.id: u for u in corpus.train + corpus.valid}
    assert utts["a/0"].text == "hello there" and utts["a/1"].text == ""
    frames = audio.num_frames(int(SECONDS * 24000))
    assert all(u.frames == 2 * (frames // 2) == 2 * u.tokens.shape[0] for u in utts.values())
    # the stored mel is the log-mel of the (resampled) signal, rounded to float16
    wav = audio.resample(_voice(22050, 260, 12), 22050, 24000)
    want = np.asarray(audio.log_mel(wav))[: utts["b/2"].frames].astype(np.float16).astype(np.float32)
    err = np.abs(want - utts["b/2"].mel).max()
    assert err <= 0.02, err  # the 16-bit storage of the input wav and float16 rounding
    # the shipped tokenizer's head, with this corpus's speakers' statistics (of their training frames)
    shipped = SpeechTokenizer.load(corpus_lib.corpus_paths(corpus_lib.DEFAULT_CORPUS)["tokenizer"])
    tok = corpus.tokenizer()
    np.testing.assert_array_equal(tok.w1, shipped.w1)
    assert tok.speakers == ("a", "b")
    _, mean, _ = speaker_statistics({"b": [u.mel for u in corpus.train if u.speaker == "b"]})
    np.testing.assert_array_equal(tok.speaker_stats("b")[0], mean[0])
    for u in utts.values():
        np.testing.assert_array_equal(shipped.encode(u.mel, tok.speaker_stats(u.speaker)), u.tokens)


def test_prepare_rejects_other_rates_without_resampling(wav_dir, tmp_path):
    index = prepare.prepare_corpus(wav_dir, tmp_path / "c", resample=False, valid_per_speaker=1, progress=False)
    reasons = {s["path"]: s["reason"] for s in index["skipped"]}
    assert "22050 Hz != 24000 Hz (resampling disabled)" in reasons["b/2.wav"]
    assert "b/2" not in {u["id"] for u in index["utterances"]}


def test_prepare_strict_raises_on_the_first_bad_file(wav_dir, tmp_path):
    with pytest.raises(prepare.PrepareError, match="broken.wav.*unreadable audio"):
        prepare.prepare_corpus(wav_dir, tmp_path / "c", strict=True, progress=False)


def test_cli_fits_a_tokenizer_and_keeps_validation_wavs(wav_dir, tmp_path, capsys):
    out = tmp_path / "c"
    meta = tmp_path / "meta.txt"
    meta.write_text("a/0.wav|alice|first\na/1.wav|alice|second\nb/0.wav|bob|third\nb/1.wav|bob|fourth\n")
    rc = prepare.main(["--wavs", str(wav_dir), "--out", str(out), "--metadata", str(meta), "--fit-tokenizer", "4",
                       "--kmeans-iters", "5", "--valid-per-speaker", "1", "--keep-wavs", "valid"])
    assert rc == 0 and "4 utterances (2 valid), 2 speakers, vocab 4, 0 skipped" in capsys.readouterr().out
    corpus = corpus_lib.load_corpus(out)
    assert corpus.vocab_size == corpus.tokenizer().vocab_size == 4 and corpus.speakers == ("alice", "bob")
    assert {u.text for u in corpus.train + corpus.valid} == {"first", "second", "third", "fourth"}
    assert all(u.wav is not None and u.wav.is_file() for u in corpus.valid)
    assert all(u.wav is None for u in corpus.train)
    for u in corpus.valid:  # a kept wav reproduces its stored mel (same front-end, float16 storage)
        mel = np.asarray(audio.log_mel(audio.load_wav(u.wav, 24000)[0]))[: u.frames]
        np.testing.assert_array_equal(mel.astype(np.float16).astype(np.float32), u.mel)


def test_prepare_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="wavs: directory"):
        prepare.find_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(prepare.PrepareError, match="no usable audio"):
        prepare.prepare_corpus(tmp_path / "empty", tmp_path / "out", progress=False)
    bad_meta = tmp_path / "m.txt"
    bad_meta.write_text("only-a-path.wav\n")
    with pytest.raises(prepare.PrepareError, match="metadata line 1"):
        prepare.find_inputs(tmp_path / "empty", bad_meta)


def test_speaker_embeddings_properties():
    rng = np.random.default_rng(0)
    a = [rng.normal(-3.0, 1.0, (50, 80)), rng.normal(-3.0, 1.0, (30, 80))]
    b = [rng.normal(-5.0, 2.0, (40, 80))]
    emb = prepare.speaker_embeddings({"a": a, "b": b})
    assert emb["a"].shape == (192,) and emb["a"].dtype == np.float32
    assert np.linalg.norm(emb["a"] - emb["b"]) > 1.0
    again = prepare.speaker_embeddings({"a": a, "b": b})
    np.testing.assert_array_equal(again["a"], emb["a"])
    # statistics relative to the whole set: one speaker alone sits at the origin
    np.testing.assert_allclose(prepare.speaker_embeddings({"a": a})["a"], 0.0, atol=1e-5)
