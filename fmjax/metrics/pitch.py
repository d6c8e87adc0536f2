"""F0 and voicing read off a log-mel, and the F0 agreement of generated mels with the ground truth.

With CosyVoice2's front-end (80-ms windows, mel bins about 37 Hz apart below 1 kHz) a voiced frame shows its
harmonics as stripes in the low mel bins. :func:`f0_from_mel` scores each candidate ``f0`` (log-spaced,
``fmin .. fmax``, 1/24 octave apart) by the **harmonic contrast**: the mean log-mel, linearly interpolated
between bin centres, at the harmonics ``h·f0`` minus that at the midpoints ``(h - 1/2)·f0``, over the harmonics
below ``max_harmonic_hz``. The best candidate is the frame's F0; the frame is voiced when its contrast exceeds
``threshold`` nats. The contrast is octave-safe: at ``2·f0`` the midpoints fall on odd harmonics (negative
contrast), at ``f0 / 2`` half of the "harmonics" are troughs.

This is a reader for comparing mels with each other (the tests check it on synthetic harmonic signals), not a
state-of-the-art pitch tracker.
"""

from __future__ import annotations

import functools

import numpy as np

from fmjax.audio import MelConfig, hz_to_mel, mel_to_hz

__all__ = ["VOICING_THRESHOLD", "f0_from_mel", "f0_agreement"]

VOICING_THRESHOLD = 0.5
"""Harmonic contrast (nats) above which a frame counts as voiced (see data/corpus/README.md for its choice)."""


@functools.lru_cache(maxsize=8)
def _contrast_matrix(config: MelConfig, fmin: float, fmax: float, max_harmonic_hz: float):
    """``(candidates [C] Hz, W [m, C])``: ``mel @ W`` is the harmonic contrast of each candidate."""
    top = config.sample_rate / 2 if config.fmax is None else config.fmax
    centres = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(top), config.n_mels + 2))[1:-1]  # [m]
    candidates = fmin * 2.0 ** (np.arange(int(np.floor(24 * np.log2(fmax / fmin))) + 1) / 24)  # [C]
    eye = np.eye(config.n_mels)

    def at(freqs):  # [k] Hz -> [k, m] interpolation weights (clamped at the ends)
        return np.stack([np.interp(freqs, centres, eye[j]) for j in range(config.n_mels)], axis=-1)

    cols = []
    for f0 in candidates:
        h = np.arange(1, int(max_harmonic_hz // f0) + 1)
        cols.append(at(h * f0).mean(axis=0) - at((h - 0.5) * f0).mean(axis=0))  # [m]
    w = np.stack(cols, axis=1)
    w.setflags(write=False)
    return candidates, w


def f0_from_mel(mel, config: MelConfig = MelConfig(), *, fmin: float = 60.0, fmax: float = 400.0,
                max_harmonic_hz: float = 1000.0, threshold: float = VOICING_THRESHOLD):
    """F0 of each frame of a ``[t, m]`` natural-log mel.

    Returns:
      ``(f0 [t], contrast [t])`` float64: F0 in Hz (0 where unvoiced: contrast <= ``threshold``), and the best
      candidate's harmonic contrast in nats.
    """
    x = np.asarray(mel, np.float64)
    if x.ndim != 2 or x.shape[1] != config.n_mels:
        raise ValueError(f"mel: expected shape [t, {config.n_mels}], got {x.shape}")
    if not 0 < fmin < fmax <= max_harmonic_hz:
        raise ValueError(f"fmin, fmax: expected 0 < fmin < fmax <= max_harmonic_hz, got {fmin}, {fmax}, "
                         f"{max_harmonic_hz}")
    candidates, w = _contrast_matrix(config, float(fmin), float(fmax), float(max_harmonic_hz))
    scores = x @ w  # [t, C]
    best = np.argmax(scores, axis=1)
    contrast = scores[np.arange(x.shape[0]), best]
    return np.where(contrast > threshold, candidates[best], 0.0), contrast


def f0_agreement(pred_mels, true_mels, config: MelConfig = MelConfig()) -> dict[str, float]:
    """Voicing error (fraction of frames whose voiced/unvoiced decision differs) and F0 RMSE in cents over the
    frames voiced in both, pooled over paired lists of ``[t_i, m]`` mels (frames aligned)."""
    if len(pred_mels) != len(true_mels) or not len(true_mels):
        raise ValueError(f"pred_mels, true_mels: expected equally many (>= 1) mels, got {len(pred_mels)}, "
                         f"{len(true_mels)}")
    fp = np.concatenate([f0_from_mel(p, config)[0] for p in pred_mels])
    ft = np.concatenate([f0_from_mel(t, config)[0] for t in true_mels])
    if fp.shape != ft.shape:
        raise ValueError(f"pred_mels: expected the frame counts of true_mels ({ft.shape[0]} in all), got {fp.shape[0]}")
    both = (fp > 0) & (ft > 0)
    cents = 1200 * np.log2(fp[both] / ft[both]) if both.any() else np.zeros(0)
    return {"vuv_error": float(np.mean((fp > 0) != (ft > 0))),
            "f0_rmse_cents": float(np.sqrt(np.mean(cents ** 2))) if cents.size else float("nan"),
            "voiced_truth": float(np.mean(ft > 0))}
