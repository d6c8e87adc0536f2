"""A speaker-normalised speech tokenizer: 50-Hz log-mel frames in, 25-Hz discrete tokens out.

**Features.** Each frame's log-mel ``x [m]`` becomes its low-order cepstrum ``c_0 .. c_{n-1}`` (the orthonormal
DCT-II over the mel bins, as :func:`fmjax.metrics.mel_cepstrum`; ``n = 20`` by default), which keeps the spectral
envelope and drops the harmonic ripple of the pitch (at 24 kHz / 80 bins the harmonics of a 100-300 Hz voice sit
at quefrencies above 20). The cepstra are normalised **per speaker**, ``(c - mean_s) / std_s``, with the mean and
std of the speaker's training frames; the table of these statistics is part of the tokenizer (``speakers``,
``speaker_mean``, ``speaker_std``) so that a generated mel can be re-tokenised with its target speaker's
statistics. Token ``u`` sees frames ``2u - C .. 2u + 1 + C`` (``C = context``; edge frames repeat at the ends):
``(2 + 2C)·n`` values.

**Head.** ``logits = tanh(x w1 + b1) w2 + b2`` (an MLP) or ``x w2 + b2`` (linear); the token is the argmax
(ties to the lowest id). Two ways to fit it (:meth:`SpeechTokenizer.fit`):

* *supervised* (the shipped tokenizer): the MLP is trained to predict per-token phone-state labels
  (:mod:`fmjax.data.phone_states`) -- a small analogue of CosyVoice's S3 tokenizer, which is an ASR-trained
  encoder with a quantiser: the tokens follow the phonetic content, not the voice;
* *unsupervised* (``labels=None``, e.g. ``python -m fmjax.data.prepare --fit-tokenizer K``): k-means on the
  features; the codebook ``C`` is the linear head ``w2 = 2 Cᵀ``, ``b2 = -|c_k|²``, whose argmax is the nearest
  centroid.

**Encoding** (:meth:`SpeechTokenizer.encode`) runs on the host in float64 numpy, so the tokens of a mel are the
same on every machine and device; an odd last frame is dropped (``frames == 2·tokens`` after trimming to
``2 * (frames // 2)``, as CosyVoice's dataset does).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import numpy as np

from fmjax.data.kmeans import fit_kmeans, kmeans_plus_plus, lloyd
from fmjax.data.token_classifier import mlp_logits, train_mlp
from fmjax.typing import Key

__all__ = ["SpeechTokenizer", "speaker_statistics", "cepstra", "pair_frames", "kmeans_plus_plus", "lloyd",
           "fit_kmeans", "N_CEPSTRA"]

N_CEPSTRA = 20
_FORMAT = "fmjax-speech-tokenizer"
_VERSION = 2
_OLD_FORMAT = "fmjax-kmeans-speech-tokenizer"


@functools.lru_cache(maxsize=8)
def _dct(m: int) -> np.ndarray:
    """Orthonormal DCT-II ``[m, m]`` in float64 (row ``k`` = basis vector ``k``)."""
    n = np.arange(m)
    basis = np.cos(np.pi * n[:, None] * (2 * n[None, :] + 1) / (2 * m)) * np.sqrt(2.0 / m)
    basis[0] = np.sqrt(1.0 / m)
    basis.setflags(write=False)
    return basis


def cepstra(mel: np.ndarray, n_cepstra: int = N_CEPSTRA) -> np.ndarray:
    """float64 ``[..., t, n]``: coefficients ``c_0 .. c_{n-1}`` of each log-mel frame ``[..., t, m]``."""
    mel = np.asarray(mel, np.float64)
    return mel @ _dct(mel.shape[-1])[:n_cepstra].T


def pair_frames(mel):
    """Drops an odd last frame and joins frames ``2u, 2u + 1`` into one ``2m`` vector: ``[..., t, m] ->
    [..., t // 2, 2m]``."""
    t, m = mel.shape[-2], mel.shape[-1]
    mel = mel[..., : 2 * (t // 2), :]
    return mel.reshape(*mel.shape[:-2], t // 2, 2 * m)


def speaker_statistics(mels_by_speaker: dict, n_cepstra: int = N_CEPSTRA):
    """Per-speaker cepstral statistics: ``(names, mean [S, n], std [S, n])`` over each speaker's ``[t, m]`` mels
    (names sorted; std floored at 1e-5)."""
    names = sorted(mels_by_speaker)
    if not names or any(len(mels_by_speaker[s]) == 0 for s in names):
        raise ValueError("mels_by_speaker: expected at least one mel for every speaker")
    mean, std = [], []
    for s in names:
        c = np.concatenate([cepstra(x, n_cepstra) for x in mels_by_speaker[s]], axis=0)  # [frames, n]
        mean.append(c.mean(axis=0))
        std.append(np.maximum(c.std(axis=0), 1e-5))
    return tuple(names), np.stack(mean).astype(np.float32), np.stack(std).astype(np.float32)


def _features(mel, stats, n_cepstra: int, context: int) -> np.ndarray:
    """``[t, m]`` log-mel -> ``[t // 2, (2 + 2C) n]`` windows of cepstra normalised by ``stats = (mean, std)``
    (None: the utterance's own)."""
    c = cepstra(np.asarray(mel)[: 2 * (np.shape(mel)[0] // 2)], n_cepstra)  # [t, n]
    mean, std = (c.mean(axis=0), np.maximum(c.std(axis=0), 1e-5)) if stats is None else stats
    return _windows((c - np.asarray(mean, np.float64)) / np.asarray(std, np.float64), context)


def _windows(z: np.ndarray, context: int) -> np.ndarray:
    """``[t, n]`` normalised cepstra (t even) -> ``[t // 2, (2 + 2C) n]`` token windows, edges repeated."""
    padded = np.pad(z, ((context, context), (0, 0)), mode="edge")  # [t + 2C, n]
    width = 2 + 2 * context
    win = np.lib.stride_tricks.sliding_window_view(padded, width, axis=0)[::2]  # [t // 2, n, width]
    return np.ascontiguousarray(win.transpose(0, 2, 1)).reshape(win.shape[0], -1)


@dataclasses.dataclass(frozen=True, eq=False)
class SpeechTokenizer:
    """Speaker-normalised cepstral windows -> argmax of a linear or MLP head (module docstring).

    Attributes:
      n_mels, n_cepstra, context: the feature settings (``m`` bins in, ``n`` cepstra, ``C`` frames each side).
      w2, b2: output layer ``[h or d, K]``, ``[K]``; w1, b1: hidden layer ``[d, h]``, ``[h]`` or None (linear).
      speakers: names; speaker_mean, speaker_std: float32 ``[S, n]`` cepstral statistics, one row per name.
    """

    n_mels: int
    n_cepstra: int
    context: int
    w2: np.ndarray
    b2: np.ndarray
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None
    speakers: tuple[str, ...] = ()
    speaker_mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, N_CEPSTRA), np.float32))
    speaker_std: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, N_CEPSTRA), np.float32))

    def __post_init__(self):
        n, d = self.n_cepstra, self.feature_dim
        if not 1 <= n <= self.n_mels:
            raise ValueError(f"n_cepstra: expected an int in [1, n_mels={self.n_mels}], got {n}")
        if self.context < 0:
            raise ValueError(f"context: expected an int >= 0, got {self.context}")
        h = d if self.w1 is None else np.shape(self.w1)[1]
        if self.w1 is not None and (np.shape(self.w1) != (d, h) or np.shape(self.b1) != (h,)):
            raise ValueError(f"w1, b1: expected shapes ({d}, h), (h,), got {np.shape(self.w1)}, {np.shape(self.b1)}")
        if np.ndim(self.w2) != 2 or np.shape(self.w2)[0] != h or np.shape(self.b2) != (np.shape(self.w2)[1],):
            raise ValueError(f"w2, b2: expected shapes ({h}, K), (K,), got {np.shape(self.w2)}, {np.shape(self.b2)}")
        s = (len(self.speakers), n)
        if np.shape(self.speaker_mean) != s or np.shape(self.speaker_std) != s:
            raise ValueError(f"speaker_mean, speaker_std: expected shape {s} (speakers x n_cepstra), got "
                             f"{np.shape(self.speaker_mean)}, {np.shape(self.speaker_std)}")
        if not np.all(np.asarray(self.speaker_std) > 0):
            raise ValueError("speaker_std: expected every entry > 0")

    @property
    def vocab_size(self) -> int:
        return int(np.shape(self.w2)[1])

    @property
    def feature_dim(self) -> int:
        return (2 + 2 * self.context) * self.n_cepstra

    @property
    def supervised(self) -> bool:
        """True for an MLP head (trained on labels), False for a k-means codebook."""
        return self.w1 is not None

    def speaker_stats(self, speaker: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean [n], std [n])`` of a speaker in the table."""
        if speaker not in self.speakers:
            raise ValueError(f"speaker: expected one of the tokenizer's speakers {list(self.speakers)}, "
                             f"got {speaker!r} (pass (mean, std) or None for a new voice)")
        i = self.speakers.index(speaker)
        return np.asarray(self.speaker_mean[i]), np.asarray(self.speaker_std[i])

    def with_speakers(self, names, mean, std) -> "SpeechTokenizer":
        """A copy with another speaker table (e.g. :func:`speaker_statistics` of a new corpus)."""
        return dataclasses.replace(self, speakers=tuple(names), speaker_mean=np.asarray(mean, np.float32),
                                   speaker_std=np.asarray(std, np.float32))

    def features(self, mel: np.ndarray, speaker=None) -> np.ndarray:
        """float64 ``[t // 2, d]`` token windows of one ``[t, m]`` log-mel (see :meth:`encode` for ``speaker``)."""
        if speaker is None:
            stats = None
        elif isinstance(speaker, str):
            stats = self.speaker_stats(speaker)
        else:
            stats = tuple(np.asarray(a, np.float64) for a in speaker)
            if len(stats) != 2 or any(a.shape != (self.n_cepstra,) for a in stats) or not np.all(stats[1] > 0):
                raise ValueError(f"speaker: expected a name, None or (mean, std) of shape ({self.n_cepstra},) with "
                                 f"std > 0, got {[a.shape for a in stats]}")
        return _features(mel, stats, self.n_cepstra, self.context)

    def encode(self, mel, speaker=None) -> np.ndarray:
        """Tokens of a log-mel ``[t, m]`` (or ``[b, t, m]``): int32 ``[..., t // 2]``.

        Args:
          mel: natural-log mel frames; an odd last frame is dropped. Finite values only.
          speaker: whose statistics normalise the cepstra: a name in :attr:`speakers`, a ``(mean, std)`` tuple of
            ``[n_cepstra]`` arrays, or None for the utterance's own statistics (for a voice not in the table; less
            faithful on a short utterance). For ``[b, t, m]``: one of these for all rows, or a list of ``b``.

        Deterministic: host-side float64, the argmax with ties to the lowest id.
        """
        mel = np.asarray(mel)
        if mel.ndim not in (2, 3) or mel.shape[-1] != self.n_mels:
            raise ValueError(f"mel: expected shape [t, {self.n_mels}] or [b, t, {self.n_mels}], got {mel.shape}")
        if mel.shape[-2] < 2:
            raise ValueError(f"mel: expected at least 2 frames (one token), got {mel.shape[-2]}")
        if not np.issubdtype(mel.dtype, np.floating) or not np.all(np.isfinite(mel)):
            raise ValueError(f"mel: expected finite floating-point values, got dtype {mel.dtype}"
                             + ("" if not np.issubdtype(mel.dtype, np.floating) else " with non-finite entries"))
        if mel.ndim == 3:
            rows = speaker if isinstance(speaker, list) else [speaker] * mel.shape[0]
            if len(rows) != mel.shape[0]:
                raise ValueError(f"speaker: expected a list of {mel.shape[0]} speakers (one per row), got {len(rows)}")
            return np.stack([self.encode(x, s) for x, s in zip(mel, rows)])
        logits = mlp_logits({"w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2}, self.features(mel, speaker))
        return np.argmax(logits, axis=-1).astype(np.int32)

    @classmethod
    def fit(cls, mels, speakers, vocab_size: int, key: Key, *, labels=None, n_cepstra: int = N_CEPSTRA,
            context: int | None = None, n_iter: int = 50, hidden: int = 256, steps: int = 1000):
        """Fits the speaker table and the head on training mels.

        Args:
          mels: ``[t_i, m]`` log-mels; speakers: their speaker names (one per mel).
          vocab_size: tokens ``K``.
          key: PRNG key (k-means++ seeding, or the MLP's initialisation and minibatches).
          labels: None (k-means, ``n_iter`` Lloyd iterations) or per-mel int arrays ``[t_i // 2]`` in ``[0, K)``
            (the MLP, ``hidden`` units, ``steps`` AdamW steps).
          context: frames each side of a token (default 4 with labels, 0 without).

        Returns:
          ``(tokenizer, history)``: the k-means objective per iteration or the MLP's loss per step.
        """
        mels = [np.asarray(x, np.float32) for x in mels]
        if not mels:
            raise ValueError("mels: expected at least one mel spectrogram, got none")
        if len(speakers) != len(mels):
            raise ValueError(f"speakers: expected one name per mel ({len(mels)}), got {len(speakers)}")
        if labels is not None and len(labels) != len(mels):
            raise ValueError(f"labels: expected one label array per mel ({len(mels)}), got {len(labels)}")
        context = (4 if labels is not None else 0) if context is None else context
        by_spk: dict[str, list] = {}
        for x, s in zip(mels, speakers):
            by_spk.setdefault(s, []).append(x)
        names, mean, std = speaker_statistics(by_spk, n_cepstra)
        stats = {s: (mean[i].astype(np.float64), std[i].astype(np.float64)) for i, s in enumerate(names)}
        x = np.concatenate([_features(m, stats[s], n_cepstra, context) for m, s in zip(mels, speakers)])  # [n, d]
        x = x.astype(np.float32)
        if labels is None:
            centroids, history = fit_kmeans(x, vocab_size, key, n_iter)
            c = np.asarray(centroids, np.float32)
            head = {"w2": 2.0 * c.T, "b2": -np.sum(c.astype(np.float64) ** 2, axis=1).astype(np.float32)}
        else:
            y = np.concatenate([np.asarray(lab).reshape(-1) for lab in labels])
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels: expected t // 2 labels per mel ({x.shape[0]} in all), got {y.shape[0]}")
            head, history = train_mlp(x, y, vocab_size, key, hidden=hidden, steps=steps)
        tok = cls(mels[0].shape[-1], n_cepstra, context, head["w2"], head["b2"], head.get("w1"), head.get("b1"),
                  names, mean, std)
        return tok, np.asarray(history)

    def save(self, path) -> None:
        """Writes an ``.npz`` with the settings, the head and the speaker table."""
        path = pathlib.Path(os.fspath(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.w1 is None else {"w1": self.w1, "b1": self.b1}
        np.savez(path, format=np.array(_FORMAT), version=np.array(_VERSION), n_mels=np.array(self.n_mels),
                 n_cepstra=np.array(self.n_cepstra), context=np.array(self.context), w2=self.w2, b2=self.b2,
                 speakers=np.array(self.speakers, dtype=str), speaker_mean=self.speaker_mean,
                 speaker_std=self.speaker_std, **extra)

    @classmethod
    def load(cls, path) -> "SpeechTokenizer":
        """Reads a file written by :meth:`save`. Raises ``FileNotFoundError`` or ``ValueError`` (not a tokenizer)."""
        path = pathlib.Path(os.fspath(path))
        if not path.is_file():
            raise FileNotFoundError(f"path: tokenizer file {str(path)!r} does not exist")
        with np.load(path, allow_pickle=False) as f:
            fmt = str(f["format"]) if "format" in f.files else None
            if fmt == _OLD_FORMAT:
                raise ValueError(f"path: {str(path)!r} is a log-mel k-means tokenizer of the old format (no speaker "
                                 "normalisation); re-make the corpus with `python -m fmjax.data.prepare`")
            if fmt != _FORMAT or int(f["version"]) != _VERSION:
                raise ValueError(f"path: {str(path)!r} is not a speech tokenizer file (no format={_FORMAT!r}, "
                                 f"version {_VERSION})")
            arr = {k: np.asarray(f[k]) for k in f.files}
        f32 = {k: arr[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2", "speaker_mean", "speaker_std")
               if k in arr}
        return cls(int(arr["n_mels"]), int(arr["n_cepstra"]), int(arr["context"]), f32["w2"], f32["b2"],
                   f32.get("w1"), f32.get("b1"), tuple(str(s) for s in arr["speakers"]), f32["speaker_mean"],
                   f32["speaker_std"])
