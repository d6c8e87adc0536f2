"""Trivial predictors every generated-mel metric is reported against, computed from a corpus's training split.

* **speaker mean**: every frame is the mean log-mel frame of the target speaker's training frames;
* **lookup decoder**: each token becomes the mean of the training frames it labels, *for the target speaker*
  (the tokens are speaker-normalised, so the same token sounds like each speaker's version of that sound): token
  ``k`` of speaker ``s`` -> the mean ``[2, m]`` pair of frames ``(2u, 2u + 1)`` over speaker ``s``'s training
  tokens ``u`` equal to ``k``. An unseen ``(s, k)`` pair falls back to the token's mean over all speakers shifted
  by the speaker's offset (its mean frame minus the mean of all training frames); a token never seen in training
  falls back to the speaker mean. It is the ideal content predictor by construction, and a blurred one: it
  cannot produce pitch contours or frame-to-frame detail that the token does not determine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["speaker_means", "LookupDecoder"]


def speaker_means(utterances, n_speakers: int) -> np.ndarray:
    """``[S, m]`` float32: the mean log-mel frame of each speaker over its utterances' frames (zeros for a speaker
    without frames)."""
    if not utterances:
        raise ValueError("utterances: expected at least one utterance, got none")
    m = utterances[0].mel.shape[1]
    sums, counts = np.zeros((n_speakers, m), np.float64), np.zeros((n_speakers,), np.int64)
    for u in utterances:
        if not 0 <= u.speaker_index < n_speakers:
            raise ValueError(f"utterances: {u.id!r} has speaker index {u.speaker_index}, expected [0, {n_speakers})")
        sums[u.speaker_index] += u.mel.sum(axis=0)
        counts[u.speaker_index] += u.mel.shape[0]
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class LookupDecoder:
    """Per-(speaker, token) mean frame pairs (module docstring).

    Attributes:
      table: float32 ``[S, V, 2, m]`` the decoded pair of every (speaker, token), fallbacks filled in.
      seen: bool ``[S, V]``: the pair occurs in the training split (else the value is a fallback).
    """

    table: np.ndarray
    seen: np.ndarray

    @classmethod
    def fit(cls, utterances, n_speakers: int, vocab_size: int) -> "LookupDecoder":
        """From training utterances (``mel [2u, m]``, ``tokens [u]``, ``speaker_index``)."""
        if not utterances:
            raise ValueError("utterances: expected at least one training utterance, got none")
        m = utterances[0].mel.shape[1]
        sums = np.zeros((n_speakers, vocab_size, 2, m), np.float64)
        counts = np.zeros((n_speakers, vocab_size), np.int64)
        for u in utterances:
            t = np.asarray(u.tokens)
            if t.size and (t.min() < 0 or t.max() >= vocab_size):
                raise ValueError(f"utterances: {u.id!r} has token ids outside [0, {vocab_size})")
            np.add.at(sums[u.speaker_index], t, np.asarray(u.mel, np.float64).reshape(-1, 2, m))
            np.add.at(counts[u.speaker_index], t, 1)
        spk_mean = speaker_means(utterances, n_speakers).astype(np.float64)  # [S, m]
        frames = np.maximum(counts.sum(axis=1), 1)
        overall = (spk_mean * frames[:, None]).sum(axis=0) / frames.sum()  # mean of all training frames [m]
        pooled_n = counts.sum(axis=0)  # [V]
        pooled = sums.sum(axis=0) / np.maximum(pooled_n, 1)[:, None, None]  # [V, 2, m]
        offset = spk_mean - overall  # [S, m]
        fallback = np.where(pooled_n[None, :, None, None] > 0, pooled[None] + offset[:, None, None, :],
                            spk_mean[:, None, None, :])  # [S, V, 2, m]
        seen = counts > 0
        table = np.where(seen[..., None, None], sums / np.maximum(counts, 1)[..., None, None], fallback)
        return cls(table.astype(np.float32), seen)

    def decode(self, tokens, speaker_index: int) -> np.ndarray:
        """float32 ``[2u, m]``: the lookup mel of tokens ``[u]`` for speaker ``speaker_index``."""
        t = np.asarray(tokens)
        s, v = self.seen.shape
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or (t.size and (t.min() < 0 or t.max() >= v)):
            raise ValueError(f"tokens: expected a 1-d int sequence with ids in [0, {v}), got {t.dtype} {t.shape}")
        if not 0 <= speaker_index < s:
            raise ValueError(f"speaker_index: expected [0, {s}), got {speaker_index}")
        return self.table[speaker_index, t].reshape(2 * t.size, -1)
