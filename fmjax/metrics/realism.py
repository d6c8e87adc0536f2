"""A realism measure for sets of generated log-mels: the Fréchet distance between frame-feature statistics.

Mel L1 against one reference cannot rank a sampler against a conditional-mean predictor: a perfect sampler's L1
is about sqrt(2) times the mean predictor's. Distribution statistics can: a blurred prediction (a lookup table
of mean frames, the speaker-mean mel) has too little frame-to-frame variation and too small a covariance, and a
noisy one too large. Each frame's feature is its log-mel and its delta, ``f_t = [x_t, (x_{t+1} - x_{t-1}) / 2]``
(``2m`` values; the first and last frame repeat at the ends of each utterance). A set of utterances is
summarised by the mean ``mu`` and covariance ``S`` of its frames' features (:class:`FrameStats`), and two sets
are compared by the Fréchet (2-Wasserstein between Gaussians) distance::

    FD = |mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})

as FID/FAD/FSD do with network embeddings. The reference is the training set's statistics. A finite set of
*real* frames does not reach 0 (sampling error of ``mu`` and ``S``, and its content), so the ceiling is the
ground truth's own distance over the same utterances; compare sets of the same utterances only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["frame_features", "FrameStats", "frechet_distance"]


def frame_features(mel) -> np.ndarray:
    """float64 ``[t, 2m]``: each frame's log-mel and delta (module docstring) for one ``[t, m]`` utterance."""
    x = np.asarray(mel, np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"mel: expected a log-mel of shape [t >= 1, m], got {x.shape}")
    p = np.pad(x, ((1, 1), (0, 0)), mode="edge")
    return np.concatenate([x, (p[2:] - p[:-2]) / 2.0], axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class FrameStats:
    """Mean ``[d]``, covariance ``[d, d]`` (float64, ``1/n`` normalised) and frame count of a set's features."""

    mean: np.ndarray
    cov: np.ndarray
    n: int

    @classmethod
    def of(cls, mels) -> "FrameStats":
        """The statistics of a list of ``[t_i, m]`` log-mels (every frame counts once)."""
        if not len(mels):
            raise ValueError("mels: expected at least one log-mel, got none")
        f = np.concatenate([frame_features(x) for x in mels], axis=0)  # [n, 2m]
        if not np.all(np.isfinite(f)):
            raise ValueError("mels: expected finite values, got NaN or inf")
        mu = f.mean(axis=0)
        c = f - mu
        return cls(mu, c.T @ c / f.shape[0], f.shape[0])


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(a: FrameStats, b: FrameStats) -> float:
    """The Fréchet distance between two :class:`FrameStats` (module docstring); symmetric, 0 for equal stats."""
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, FrameStats):
            raise TypeError(f"{name}: expected FrameStats, got {type(s).__name__}")
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"b: expected features of dimension {a.mean.shape[0]} (as a), got {b.mean.shape[0]}")
    root = _sqrt_psd(a.cov)
    cross = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(root @ b.cov @ root), 0.0)))  # tr((√A B √A)^½)
    return float(np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov) - 2.0 * cross)
