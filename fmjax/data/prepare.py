"""A folder of wavs -> a corpus directory (the format of :mod:`fmjax.data.corpus`), in one command::

    python -m fmjax.data.prepare --wavs DIR --out DIR [--metadata FILE] [--fit-tokenizer K] [--keep-wavs valid]

Inputs. Without ``--metadata`` every audio file under ``DIR`` (``.wav .flac .ogg``, searched recursively, sorted)
is an utterance; its speaker is its folder relative to ``DIR`` (files directly in ``DIR``: speaker
``"speaker0"``) and its transcript a sibling ``<name>.txt`` if present. With ``--metadata`` each line is
``relative/path.wav|speaker|text`` (paths relative to ``DIR``).

Audio policy. A file that cannot be read, is empty or shorter than one token (2 frames), or has a sample
rate below ``--min-sample-rate`` (16 kHz) is **skipped with a logged reason** (listed under ``"skipped"`` in
index.json; ``--strict`` makes it an error). Other sample rates are **resampled** to 24 kHz (``--no-resample``
rejects them instead). Channels are averaged; a signal peaking above 1 is scaled to peak 1 (as CosyVoice does);
the 24 kHz signal is rounded to 16-bit PCM before the front-end, so a kept FLAC reproduces its stored mel.

Features. Log-mels with :func:`fmjax.audio.log_mel` (CosyVoice2 settings), stored as float16; tokens are made
from the stored (float16-rounded) mel, trimmed to an even number of frames, by the speaker-normalised tokenizer
(:mod:`fmjax.data.tokenizer`): the shipped one (``data/corpus/tokenizer.npz``) unless ``--tokenizer`` names
another, with its speaker table replaced by this corpus's speakers (cepstral mean/std of each speaker's training
frames), or, with ``--fit-tokenizer K``, a K-centroid k-means tokenizer fitted on the training split (the Python
API also fits the supervised head from per-token labels: ``token_labels``). The tokenizer written to the corpus
holds every speaker's statistics, so generated mels can be re-tokenised as the target speaker's. Split: per
speaker, ``--valid-per-speaker`` utterances (default 4, at most all but one) chosen by a stable hash of
``(seed, id)`` go to validation.

Speaker embeddings (192-d): :func:`fmjax.data.speaker_embedding.speaker_embeddings` of each speaker's training
frames (per-bin mean and std relative to all training frames, projected by a fixed Gaussian matrix).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import pathlib
import sys

import jax
import numpy as np

from fmjax import audio
from fmjax.data import corpus as corpus_lib
from fmjax.data.speaker_embedding import PROJECTION_SEED, SPK_DIM, speaker_embeddings
from fmjax.data.tokenizer import SpeechTokenizer, speaker_statistics

__all__ = ["prepare_corpus", "speaker_embeddings", "find_inputs", "main", "SPK_DIM", "PROJECTION_SEED"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class PrepareError(ValueError):
    """An input could not be used and ``strict`` was set, or the inputs as a whole are unusable."""


def find_inputs(wav_dir, metadata=None) -> list[tuple[str, pathlib.Path, str, str]]:
    """The utterances to prepare as ``(id, path, speaker, text)``, sorted by id (see the module docstring)."""
    wav_dir = pathlib.Path(os.fspath(wav_dir))
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"wavs: directory {str(wav_dir)!r} does not exist")
    entries = []
    if metadata is not None:
        for n, line in enumerate(pathlib.Path(os.fspath(metadata)).read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("|", 2)
            if len(parts) != 3:
                raise PrepareError(f"metadata line {n}: expected 'path|speaker|text', got {line!r}")
            rel, speaker, text = (p.strip() for p in parts)
            entries.append((pathlib.PurePosixPath(rel).with_suffix("").as_posix(), wav_dir / rel, speaker, text))
    else:
        for path in sorted(p for p in wav_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
            rel = path.relative_to(wav_dir)
            speaker = rel.parent.as_posix() if rel.parent != pathlib.Path(".") else "speaker0"
            txt = path.with_suffix(".txt")
            text = txt.read_text().strip() if txt.is_file() else ""
            entries.append((rel.with_suffix("").as_posix(), path, speaker, text))
    ids = [e[0] for e in entries]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PrepareError(f"wavs: utterance ids must be unique, these repeat: {dup[:5]}")
    return sorted(entries)


def _stable_rank(seed: int, uid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest(), "little")


def _split(utts: list[dict], valid_per_speaker: int, seed: int) -> None:
    by_spk: dict[str, list[dict]] = {}
    for u in utts:
        by_spk.setdefault(u["speaker"], []).append(u)
    for members in by_spk.values():
        members = sorted(members, key=lambda u: _stable_rank(seed, u["id"]))
        n_valid = min(valid_per_speaker, len(members) - 1)
        for k, u in enumerate(members):
            u["split"] = "valid" if k < n_valid else "train"


_LOG_MEL = jax.jit(audio.log_mel, static_argnames="config")  # compiles once per distinct wav length


def _pcm16(wav: np.ndarray, sr: int) -> np.ndarray:
    """The signal as it reads back from a 16-bit file, so that a kept FLAC reproduces the stored mel exactly."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def _load_mel(path: pathlib.Path, config: audio.MelConfig, resample: bool, min_sample_rate: int):
    """``(mel [2u, m] float32 as stored, sample_rate)`` or raises ``audio.AudioError`` with the reason."""
    import soundfile as sf

    try:
        sr = sf.info(str(path)).samplerate
    except Exception as e:
        raise audio.AudioError(f"unreadable audio ({type(e).__name__}: {e})") from e
    if sr < min_sample_rate:
        raise audio.AudioError(f"sample rate {sr} Hz is below the minimum {min_sample_rate} Hz")
    if sr != config.sample_rate and not resample:
        raise audio.AudioError(f"sample rate {sr} Hz != {config.sample_rate} Hz (resampling disabled)")
    wav, _ = audio.load_wav(path, config.sample_rate, resample_to_sr=True)
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak > 1.0:
        wav = wav / peak
    wav = _pcm16(wav, config.sample_rate)
    if wav.size <= config.pad or audio.num_frames(wav.size, config) < 2:
        raise audio.AudioError(f"empty or too short ({wav.size} samples; one token needs 2 frames)")
    mel = np.asarray(_LOG_MEL(wav, config=config)).astype(np.float16).astype(np.float32)  # [t, m]
    return mel[: 2 * (mel.shape[0] // 2)], sr, wav


def prepare_corpus(
    wav_dir,
    out_dir,
    *,
    metadata=None,
    tokenizer=None,
    fit_vocab: int | None = None,
    kmeans_iters: int = 50,
    token_labels=None,
    classifier_steps: int = 1000,
    valid_per_speaker: int = 4,
    seed: int = 0,
    keep_wavs: str = "none",
    resample: bool = True,
    min_sample_rate: int = 16000,
    strict: bool = False,
    config: audio.MelConfig = audio.MelConfig(),
    source: dict | None = None,
    progress: bool = True,
) -> dict:
    """Builds a corpus directory from audio files; returns the index (also written to ``out_dir/index.json``).

    Args:
      wav_dir, out_dir: input folder and output corpus directory (created).
      metadata: optional ``path|speaker|text`` file.
      tokenizer: a tokenizer ``.npz`` (default: the shipped corpus's); ignored when ``fit_vocab`` is set.
      fit_vocab: fit a new tokenizer with this many tokens on the training split: k-means (``kmeans_iters``
        Lloyd iterations from k-means++ seeded with ``jax.random.key(seed)``), or, with ``token_labels``, the
        supervised MLP head (``classifier_steps`` AdamW steps).
      token_labels: ``callable(id, n_tokens) -> int [n_tokens]`` labels in ``[0, fit_vocab)`` of the training
        utterances (e.g. phone states, :mod:`fmjax.data.phone_states`); only with ``fit_vocab``.
      valid_per_speaker: validation utterances per speaker.
      keep_wavs: ``"none"``, ``"valid"`` or ``"all"``: copy those utterances' 24 kHz audio to ``wavs/`` as FLAC.
      resample, min_sample_rate, strict: the audio policy (module docstring).
      source: free-form provenance stored in the index.
    """
    from tqdm import tqdm

    if token_labels is not None and fit_vocab is None:
        raise ValueError("token_labels: only used to fit a tokenizer; pass fit_vocab too")
    if keep_wavs not in ("none", "valid", "all"):
        raise ValueError(f"keep_wavs: expected 'none', 'valid' or 'all', got {keep_wavs!r}")
    out = pathlib.Path(os.fspath(out_dir))
    files = corpus_lib.corpus_paths(out)
    entries = find_inputs(wav_dir, metadata)
    utts, skipped, mels, wavs = [], [], {}, {}
    for uid, path, speaker, text in tqdm(entries, desc="log-mel", disable=not progress, unit="wav"):
        try:
            mel, sr, wav = _load_mel(path, config, resample, min_sample_rate)
        except (audio.AudioError, FileNotFoundError) as e:
            if strict:
                raise PrepareError(f"{str(path)!r}: {e}") from e
            log.warning("skipping %s: %s", path, e)
            skipped.append({"path": str(path.relative_to(wav_dir)) if path.is_relative_to(wav_dir) else str(path),
                            "reason": str(e)})
            continue
        utts.append({"id": uid, "speaker": speaker, "text": text, "source_sample_rate": sr})
        mels[uid], wavs[uid] = mel, wav
    if not utts:
        raise PrepareError(f"wavs: no usable audio under {str(wav_dir)!r} ({len(skipped)} skipped)")
    _split(utts, valid_per_speaker, seed)
    train = [u for u in utts if u["split"] == "train"]  # every speaker keeps at least one training utterance
    train_mels, train_speakers = [mels[u["id"]] for u in train], [u["speaker"] for u in train]

    out.mkdir(parents=True, exist_ok=True)
    if fit_vocab is not None:
        key = jax.random.key(seed)
        if token_labels is None:
            tok, history = SpeechTokenizer.fit(train_mels, train_speakers, fit_vocab, key, n_iter=kmeans_iters)
            tok_info = {"fitted": True, "head": "k-means", "vocab_size": fit_vocab, "kmeans_iters": kmeans_iters,
                        "seed": seed, "objective_first": float(history[0]), "objective_last": float(history[-1])}
        else:
            labels = [np.asarray(token_labels(u["id"], m.shape[0] // 2)) for u, m in zip(train, train_mels)]
            tok, history = SpeechTokenizer.fit(train_mels, train_speakers, fit_vocab, key, labels=labels,
                                               steps=classifier_steps)
            tok_info = {"fitted": True, "head": "mlp", "vocab_size": fit_vocab, "steps": classifier_steps,
                        "seed": seed, "loss_first": float(history[0]),
                        "loss_last": float(np.mean(history[-50:]))}
        tok_info.update(n_cepstra=tok.n_cepstra, context=tok.context)
    else:
        src = corpus_lib.corpus_paths(corpus_lib.DEFAULT_CORPUS)["tokenizer"] if tokenizer is None else tokenizer
        by_spk: dict[str, list[np.ndarray]] = {}
        for m, spk in zip(train_mels, train_speakers):
            by_spk.setdefault(spk, []).append(m)
        tok = SpeechTokenizer.load(src)
        tok = tok.with_speakers(*speaker_statistics(by_spk, tok.n_cepstra))
        tok_info = {"fitted": False, "from": str(src), "speaker_statistics": "this corpus's training frames"}
    if tok.n_mels != config.n_mels:
        raise PrepareError(f"tokenizer: expects {tok.n_mels} mel bins, the front-end makes {config.n_mels}")
    tok.save(files["tokenizer"])

    tokens = {}
    for u in tqdm(utts, desc="tokens", disable=not progress, unit="utt"):
        tokens[u["id"]] = tok.encode(mels[u["id"]], u["speaker"]).astype(np.int16)
        if keep_wavs == "all" or (keep_wavs == "valid" and u["split"] == "valid"):
            rel = f"wavs/{u['id'].replace('/', '__')}.flac"
            audio.save_wav(out / rel, wavs[u["id"]], config.sample_rate)
            u["wav"] = rel

    by_spk = {}
    for m, spk in zip(train_mels, train_speakers):
        by_spk.setdefault(spk, []).append(m)
    meta = {
        "speaker_embedding": {"recipe": "fmjax.data.speaker_embedding.speaker_embeddings", "projection_seed": PROJECTION_SEED},
        "tokenizer": tok_info,
        "split": {"valid_per_speaker": valid_per_speaker, "seed": seed},
        "source": source or {},
        "skipped": skipped,
    }
    index = corpus_lib.save_corpus(
        out, config=config, vocab_size=tok.vocab_size, speakers=speaker_embeddings(by_spk), records=utts,
        mels=[mels[u["id"]] for u in utts], tokens=[tokens[u["id"]] for u in utts], meta=meta,
    )
    return index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmjax.data.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wavs", required=True, help="folder of audio files (subfolders = speakers)")
    p.add_argument("--out", required=True, help="corpus directory to write")
    p.add_argument("--metadata", help="optional 'path|speaker|text' lines")
    p.add_argument("--tokenizer", help="tokenizer .npz to use (default: the shipped corpus's)")
    p.add_argument("--fit-tokenizer", type=int, metavar="K", help="fit a new K-centroid k-means tokenizer instead")
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--valid-per-speaker", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-wavs", choices=("none", "valid", "all"), default="none")
    p.add_argument("--no-resample", action="store_true", help="reject other sample rates instead of resampling")
    p.add_argument("--min-sample-rate", type=int, default=16000)
    p.add_argument("--strict", action="store_true", help="stop at the first unusable file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    index = prepare_corpus(
        args.wavs, args.out, metadata=args.metadata, tokenizer=args.tokenizer, fit_vocab=args.fit_tokenizer,
        kmeans_iters=args.kmeans_iters, valid_per_speaker=args.valid_per_speaker, seed=args.seed,
        keep_wavs=args.keep_wavs, resample=not args.no_resample, min_sample_rate=args.min_sample_rate,
        strict=args.strict,
    )
    n_valid = sum(u["split"] == "valid" for u in index["utterances"])
    print(f"wrote {args.out}: {len(index['utterances'])} utterances ({n_valid} valid), "
          f"{len(index['speakers'])} speakers, vocab {index['vocab_size']}, {len(index['skipped'])} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
