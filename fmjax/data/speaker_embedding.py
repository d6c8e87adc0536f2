"""The corpus's 192-d speaker embeddings (the stand-in for CosyVoice's CAM++ x-vectors), for speakers and utterances.

A set of log-mel frames ``x`` (a speaker's training frames, or one utterance) is summarised by its per-bin mean
and std relative to a reference -- the mean ``mu`` and std ``sd`` of all training frames of the corpus --
``z = [(mean(x) - mu) / sd, log(std(x) / sd)]`` (``2m`` values), projected by a fixed Gaussian matrix
``P = RandomState(0).standard_normal((2m, 192)) / sqrt(2m)`` (numpy's legacy generator, whose stream is
frozen): ``e = z @ P``. :func:`speaker_embeddings` is the recipe that made ``speakers.npz``;
:class:`SpeakerEmbedder` applies the same recipe to any utterance, e.g. a generated one, to identify its speaker.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SPK_DIM", "PROJECTION_SEED", "SpeakerEmbedder", "speaker_embeddings"]

SPK_DIM = 192
PROJECTION_SEED = 0


def _projection(m: int) -> np.ndarray:
    return np.random.RandomState(PROJECTION_SEED).standard_normal((2 * m, SPK_DIM)) / np.sqrt(2 * m)


@dataclasses.dataclass(frozen=True, eq=False)
class SpeakerEmbedder:
    """The reference statistics ``mu``, ``sd`` ``[m]`` (float64) and the projection ``[2m, 192]``."""

    mu: np.ndarray
    sd: np.ndarray
    projection: np.ndarray

    @classmethod
    def from_frames(cls, mels) -> "SpeakerEmbedder":
        """The reference of a list of ``[t, m]`` mels (the corpus's training mels)."""
        every = np.concatenate([np.asarray(x, np.float64) for x in mels], axis=0)
        return cls(every.mean(axis=0), np.maximum(every.std(axis=0), 1e-5), _projection(every.shape[1]))

    def embed(self, frames) -> np.ndarray:
        """float32 ``[192]`` embedding of ``[t, m]`` log-mel frames (t >= 1)."""
        x = np.asarray(frames, np.float64)
        if x.ndim != 2 or x.shape[1] != self.mu.shape[0] or x.shape[0] < 1:
            raise ValueError(f"frames: expected shape [t >= 1, {self.mu.shape[0]}], got {x.shape}")
        z = np.concatenate([(x.mean(axis=0) - self.mu) / self.sd,
                            np.log(np.maximum(x.std(axis=0), 1e-5) / self.sd)])  # [2m]
        return (z @ self.projection).astype(np.float32)


def speaker_embeddings(mels_by_speaker: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """192-d speaker embeddings from each speaker's ``[t, m]`` log-mels, relative to all of them together."""
    embedder = SpeakerEmbedder.from_frames([x for ms in mels_by_speaker.values() for x in ms])
    return {s: embedder.embed(np.concatenate([np.asarray(x, np.float64) for x in ms], axis=0))
            for s, ms in mels_by_speaker.items()}
