"""The speech corpus format: loading, per-record validation, and utterance records.

A corpus directory (``data/corpus`` ships with the repository; ``python -m fmjax.data.prepare`` makes new ones)
holds::

    index.json      format tag and version, the mel front-end settings, vocab size, speaker names, and one
                    record per utterance: {id, speaker, text, split: "train"|"valid", frames, tokens[, wav]}
    features.npz    "mel": float16 [sum of frames, m] and "tokens": int16 [sum of tokens], the utterances
                    concatenated in index order
    speakers.npz    "names" [S], "embeddings" float32 [S, 192]
    tokenizer.npz   the k-means speech tokenizer that made the tokens (:class:`SpeechTokenizer`)
    wavs/           optional 24 kHz reference recordings named in the records' "wav" field

Validation (:func:`load_corpus`):

* **Corpus-level problems raise** ``ValueError`` (``FileNotFoundError`` for missing files): an unknown format
  or version, a sample rate or mel front-end different from the one expected (a *sample-rate mismatch*),
  feature arrays whose lengths disagree with the index, speaker embeddings of the wrong width.
* **A bad record is skipped with a logged warning** and listed in ``Corpus.skipped`` as ``(id, reason)``
  (or raises ``ValueError`` with ``strict=True``): an empty utterance (0 frames or 0 tokens), a token/mel length
  mismatch (``frames != 2 * tokens``), token ids outside the vocabulary, non-finite mel values, an unknown
  speaker or split, a duplicate id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import numpy as np

from fmjax.audio import MelConfig

__all__ = ["DEFAULT_CORPUS", "FORMAT", "VERSION", "Utterance", "Corpus", "load_corpus", "save_corpus", "corpus_paths"]

log = logging.getLogger(__name__)

# The repository's shipped corpus, found next to the package (works from any cwd with an editable install).
DEFAULT_CORPUS = pathlib.Path(__file__).resolve().parents[2] / "data" / "corpus"
FORMAT = "fmjax-speech-corpus"
VERSION = 1
FRAMES_PER_TOKEN = 2
SPLITS = ("train", "valid")


def corpus_paths(root) -> dict[str, pathlib.Path]:
    """The files of a corpus directory, by role: index, features, speakers, tokenizer, wavs."""
    root = pathlib.Path(os.fspath(root))
    names = {"index": "index.json", "features": "features.npz", "speakers": "speakers.npz",
             "tokenizer": "tokenizer.npz", "wavs": "wavs"}
    return {role: root / name for role, name in names.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
    """One validated utterance.

    Attributes:
      id: unique name; speaker: speaker name; speaker_index: row in ``Corpus.spk_embeddings``; text: transcript
      (may be empty); mel: float32 ``[t, m]`` log-mel at 50 frames/s; tokens: int32 ``[t // 2]`` at 25 Hz
      (``t == 2 * len(tokens)`` always); spk: float32 ``[192]`` speaker embedding; wav: reference recording or None.
    """

    id: str
    speaker: str
    speaker_index: int
    text: str
    mel: np.ndarray
    tokens: np.ndarray
    spk: np.ndarray
    wav: pathlib.Path | None = None

    @property
    def frames(self) -> int:
        return int(self.mel.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A loaded corpus: utterances split into train/valid, speakers and their embeddings, and provenance."""

    root: pathlib.Path
    config: MelConfig
    vocab_size: int
    speakers: tuple[str, ...]
    spk_embeddings: np.ndarray  # [S, 192]
    train: tuple[Utterance, ...]
    valid: tuple[Utterance, ...]
    skipped: tuple[tuple[str, str], ...]
    meta: dict

    @property
    def tokenizer_path(self) -> pathlib.Path:
        return corpus_paths(self.root)["tokenizer"]

    def tokenizer(self):
        """The :class:`~fmjax.data.tokenizer.SpeechTokenizer` that made this corpus's tokens."""
        from fmjax.data.tokenizer import SpeechTokenizer

        return SpeechTokenizer.load(self.tokenizer_path)

    def __repr__(self) -> str:
        return (f"Corpus({str(self.root)!r}, train={len(self.train)}, valid={len(self.valid)}, "
                f"speakers={len(self.speakers)}, vocab={self.vocab_size}, skipped={len(self.skipped)})")


def save_corpus(
    root,
    *,
    config: MelConfig,
    vocab_size: int,
    speakers: dict[str, np.ndarray],
    records: list[dict],
    mels: list[np.ndarray],
    tokens: list[np.ndarray],
    meta: dict | None = None,
) -> dict:
    """Writes index.json, features.npz and speakers.npz (the tokenizer and wavs are the caller's).

    Args:
      root: the corpus directory (created).
      config: the mel front-end the features were made with.
      vocab_size: the token vocabulary size.
      speakers: name -> float32 ``[s]`` embedding.
      records: one dict per utterance with at least ``id``, ``speaker``, ``text``, ``split`` (more keys are
        kept); ``frames`` and ``tokens`` are filled in from the arrays.
      mels, tokens: ``[t, m]`` and ``[u]`` per record (stored as float16 / int16; written as given, unvalidated,
        so that tests can write bad records).
      meta: extra top-level index fields (provenance).

    Returns:
      the index dict that was written.
    """
    if not len(records) == len(mels) == len(tokens):
        raise ValueError(
            f"records, mels, tokens: expected equal lengths, got {len(records)}, {len(mels)}, {len(tokens)}"
        )
    files = corpus_paths(root)
    files["index"].parent.mkdir(parents=True, exist_ok=True)
    names = sorted(speakers)
    emb = np.stack([np.asarray(speakers[n], np.float32) for n in names]) if names else np.zeros((0, 192), np.float32)
    np.savez(files["speakers"], names=np.array(names), embeddings=emb)
    m = config.n_mels
    np.savez_compressed(
        files["features"],
        mel=np.concatenate([np.asarray(x, np.float16).reshape(-1, m) for x in mels] or [np.zeros((0, m), np.float16)]),
        tokens=np.concatenate([np.asarray(x, np.int16).reshape(-1) for x in tokens] or [np.zeros((0,), np.int16)]),
    )
    records = [dict(r, frames=int(np.shape(x)[0]), tokens=int(np.size(t))) for r, x, t in zip(records, mels, tokens)]
    index = {
        "format": FORMAT,
        "version": VERSION,
        "mel_config": dataclasses.asdict(config),
        "frames_per_token": FRAMES_PER_TOKEN,
        "vocab_size": int(vocab_size),
        "spk_dim": int(emb.shape[1]),
        "speakers": names,
        **(meta or {}),
        "utterances": records,
    }
    files["index"].write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return index


def _config_from_json(d: dict) -> MelConfig:
    fields = {f.name for f in dataclasses.fields(MelConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"index.json mel_config: unknown fields {sorted(unknown)}")
    return MelConfig(**d)


def _read_index(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"path: corpus index {str(path)!r} does not exist")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"path: {str(path)!r} is not a readable JSON corpus index ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"path: {str(path)!r} is not a corpus index (a JSON {type(meta).__name__}, expected an object)")
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"path: {str(path)!r} is not a corpus index (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    if meta.get("version") != VERSION:
        raise ValueError(f"path: {str(path)!r} has corpus format version {meta.get('version')!r}, expected {VERSION}")
    for key in ("mel_config", "vocab_size", "utterances"):
        if key not in meta:
            raise ValueError(f"path: {str(path)!r} lacks the field {key!r}")
    return meta


def _read_npz(path: pathlib.Path, keys: tuple[str, ...], expected: str) -> list[np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` corpus file; any read failure is one ValueError naming the path."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise ValueError(f"path: corpus file {str(path)!r} lacks the arrays {missing} (it has {f.files}); "
                                 f"expected {expected}")
            return [f[k] for k in keys]
    except ValueError as err:
        if str(err).startswith("path: "):
            raise
        raise ValueError(f"path: corpus file {str(path)!r} is not a readable .npz of {expected} "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from err
    except Exception as err:  # noqa: BLE001 -- BadZipFile, EOFError, OSError, zlib.error, ...
        raise ValueError(f"path: corpus file {str(path)!r} is not a readable .npz of {expected} "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); it is "
                         "truncated or corrupt") from err


def _record_problem(
    rec: dict, mel: np.ndarray, tokens: np.ndarray, vocab: int, speakers: dict, seen: set
) -> str | None:
    """The reason a record is unusable, or None."""
    if rec["id"] in seen:
        return "duplicate id"
    if rec.get("speaker") not in speakers:
        return f"unknown speaker {rec.get('speaker')!r}"
    if rec.get("split") not in SPLITS:
        return f"unknown split {rec.get('split')!r} (expected one of {SPLITS})"
    if mel.shape[0] == 0 or tokens.shape[0] == 0:
        return f"empty utterance ({mel.shape[0]} frames, {tokens.shape[0]} tokens)"
    if mel.shape[0] != FRAMES_PER_TOKEN * tokens.shape[0]:
        return f"token/mel length mismatch: {mel.shape[0]} frames != {FRAMES_PER_TOKEN} x {tokens.shape[0]} tokens"
    if tokens.min() < 0 or tokens.max() >= vocab:
        return f"token ids outside [0, {vocab}): min {tokens.min()}, max {tokens.max()}"
    if not np.all(np.isfinite(mel)):
        return "non-finite mel values"
    return None


def load_corpus(path=None, *, config: MelConfig | None = MelConfig(), strict: bool = False) -> Corpus:
    """Loads and validates a corpus directory (see the module docstring for the format and the error policy).

    Args:
      path: the corpus directory; None for the shipped one (:data:`DEFAULT_CORPUS`, resolved next to the
        package, so it works from any working directory).
      config: the mel front-end the caller expects (CosyVoice2's by default); a corpus made with other
        settings (e.g. another sample rate) raises ``ValueError``. None accepts whatever the corpus declares.
      strict: raise ``ValueError`` on the first bad record instead of skipping it with a warning.
    """
    root = DEFAULT_CORPUS if path is None else pathlib.Path(os.fspath(path))
    if not root.is_dir():
        hint = ""
        if path is None:
            hint = " (the shipped corpus lives in the repository: install fmjax with `pip install -e .`)"
        raise FileNotFoundError(f"path: corpus directory {str(root)!r} does not exist{hint}")
    files = corpus_paths(root)
    meta = _read_index(files["index"])
    found = _config_from_json(meta["mel_config"])
    if config is not None and found != config:
        raise ValueError(
            f"path: corpus {str(root)!r} was made with {found} (sample rate {found.sample_rate} Hz), "
            f"expected {config} (sample rate {config.sample_rate} Hz)"
        )
    vocab = int(meta["vocab_size"])
    for role in ("features", "speakers"):
        if not files[role].is_file():
            raise FileNotFoundError(f"path: corpus file {str(files[role])!r} does not exist")
    names, spk_emb = _read_npz(files["speakers"], ("names", "embeddings"), "speaker names [S] and embeddings [S, 192]")
    names, spk_emb = [str(n) for n in names], np.asarray(spk_emb, np.float32)
    spk_dim = int(meta.get("spk_dim", 192))
    if spk_emb.shape != (len(names), spk_dim):
        raise ValueError(f"speakers.npz: expected embeddings of shape ({len(names)}, {spk_dim}), got {spk_emb.shape}")
    speakers = {n: i for i, n in enumerate(names)}
    mels, tokens = _read_npz(files["features"], ("mel", "tokens"), "the concatenated mel [frames, m] and tokens")
    records = meta["utterances"]
    try:
        n_frames = sum(int(r["frames"]) for r in records)
        n_tokens = sum(int(r["tokens"]) for r in records)
        [r["id"] for r in records]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"path: {str(files['index'])!r}: expected utterance records with integer 'frames' and "
                         f"'tokens' and an 'id', got a malformed record ({type(e).__name__}: {e})") from None
    if mels.ndim != 2 or mels.shape[1] != found.n_mels or mels.shape[0] != n_frames or tokens.shape != (n_tokens,):
        raise ValueError(
            f"features.npz: expected mel [{n_frames}, {found.n_mels}] and tokens [{n_tokens}] as the index lists, "
            f"got mel {mels.shape} and tokens {tokens.shape}"
        )
    splits: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    skipped, seen = [], set()
    f0 = t0 = 0
    for rec in records:
        nf, nt = int(rec["frames"]), int(rec["tokens"])
        mel = mels[f0 : f0 + nf].astype(np.float32)  # [t, m]
        tok = tokens[t0 : t0 + nt].astype(np.int32)  # [t // 2]
        f0, t0 = f0 + nf, t0 + nt
        problem = _record_problem(rec, mel, tok, vocab, speakers, seen)
        if problem is not None:
            if strict:
                raise ValueError(f"utterance {rec.get('id')!r} in {str(root)!r}: {problem}")
            log.warning("skipping utterance %r: %s", rec.get("id"), problem)
            skipped.append((str(rec.get("id")), problem))
            continue
        seen.add(rec["id"])
        s = speakers[rec["speaker"]]
        wav = root / rec["wav"] if rec.get("wav") else None
        splits[rec["split"]].append(
            Utterance(rec["id"], rec["speaker"], s, rec.get("text", ""), mel, tok, spk_emb[s], wav)
        )
    return Corpus(root, found, vocab, tuple(names), spk_emb, tuple(splits["train"]), tuple(splits["valid"]),
                  tuple(skipped), meta)
