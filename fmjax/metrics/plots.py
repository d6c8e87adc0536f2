"""A PNG of F0/voicing and per-bin mel statistics of generated mels against the ground truth (and baselines)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from fmjax.audio import MelConfig
from fmjax.metrics.pitch import f0_from_mel

__all__ = ["plot_speech_stats"]


def plot_speech_stats(path, sets: dict[str, list[np.ndarray]], *, truth: str = "ground truth", index: int = 0,
                      config: MelConfig = MelConfig(), title: str = "") -> pathlib.Path:
    """Writes a three-panel PNG and returns its path.

    Panels: the F0 contour (:func:`fmjax.metrics.pitch.f0_from_mel`; gaps where unvoiced) of utterance ``index``
    in every set; the per-bin mean log-mel over all frames of each set; the per-bin std.

    Args:
      path: the PNG to write (parent folders are created).
      sets: name -> list of ``[t_i, m]`` mels of the same utterances (frames aligned), one of them ``truth``.
      index: which utterance's F0 contour to draw.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if truth not in sets:
        raise ValueError(f"truth: expected one of the sets {list(sets)}, got {truth!r}")
    k = len(sets[truth])
    for name, mels in sets.items():
        if len(mels) != k:
            raise ValueError(f"sets: {name!r} has {len(mels)} mels, expected {k} (as {truth!r})")
    if not 0 <= index < k:
        raise ValueError(f"index: expected an utterance in [0, {k}), got {index}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for name, mels in sets.items():
        style = dict(lw=2.0, color="k") if name == truth else dict(lw=1.2)
        f0, _ = f0_from_mel(mels[index], config)
        axes[0].plot(np.arange(f0.size) / config.frame_rate, np.where(f0 > 0, f0, np.nan), label=name, **style)
        frames = np.concatenate([np.asarray(x, np.float64) for x in mels])
        axes[1].plot(frames.mean(axis=0), label=name, **style)
        axes[2].plot(frames.std(axis=0), label=name, **style)
    axes[0].set(xlabel="s", ylabel="F0 (Hz)", title=f"F0 of utterance {index} (gaps: unvoiced)")
    axes[1].set(xlabel="mel bin", ylabel="log-mel", title="per-bin mean")
    axes[2].set(xlabel="mel bin", ylabel="log-mel", title="per-bin std over frames")
    axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
