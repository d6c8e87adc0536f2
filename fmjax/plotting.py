"""Small matplotlib helpers shared by the notebooks, the trainer's sample writers and the benchmarks.

Every function takes an optional ``ax`` and returns it, so figures compose; nothing here calls ``plt.show``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["scatter_points", "plot_trajectories", "plot_mels", "plot_histograms"]


def _axes(ax, figsize=(4, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def scatter_points(points, ax=None, *, title: str = "", color=None, lim: float = 3.0, s: float = 2.0, label=None):
    """Scatter of 2-D points ``[p, 2]`` on a square ``[-lim, lim]²`` canvas."""
    ax = _axes(ax)
    pts = np.asarray(points)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=0.5, color=color, label=label)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    if title:
        ax.set_title(title)
    return ax


def plot_trajectories(x0, trajectory, ax=None, *, title: str = "", max_paths: int = 200, lim: float = 3.0):
    """ODE paths of 2-D points: ``x0 [p, 2]`` and ``trajectory [n, p, 2]`` (the states after each step)."""
    ax = _axes(ax)
    path = np.concatenate([np.asarray(x0)[None], np.asarray(trajectory)], axis=0)[:, :max_paths]  # [n+1, p, 2]
    ax.plot(path[:, :, 0], path[:, :, 1], color="0.6", lw=0.5, alpha=0.6)
    ax.scatter(path[0, :, 0], path[0, :, 1], s=3, color="tab:blue", label="x₀ (source)")
    ax.scatter(path[-1, :, 0], path[-1, :, 1], s=3, color="tab:red", label="x₁ (sample)")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def plot_mels(mels: dict, *, frame_rate: float = 50.0, vmin=None, vmax=None, title: str = ""):
    """Stacked log-mel images ``{name: [t, m]}`` with a shared colour scale; returns the figure."""
    import matplotlib.pyplot as plt

    arrays = {k: np.asarray(v) for k, v in mels.items()}
    lo = min(a.min() for a in arrays.values()) if vmin is None else vmin
    hi = max(a.max() for a in arrays.values()) if vmax is None else vmax
    fig, axes = plt.subplots(len(arrays), 1, figsize=(8, 2.2 * len(arrays)), squeeze=False)
    for ax, (name, mel) in zip(axes[:, 0], arrays.items()):
        extent = (0, mel.shape[0] / frame_rate, 0, mel.shape[1])
        im = ax.imshow(mel.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, extent=extent, cmap="magma")
        ax.set_ylabel(f"{name}\nmel bin")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="log-mel")
    if title:
        fig.suptitle(title)
    return fig


def plot_histograms(samples: dict, ax=None, *, bins: int = 50, title: str = "", xlabel: str = "t"):
    """Overlaid density histograms of 1-D samples ``{name: [n]}``."""
    ax = _axes(ax, figsize=(6, 3.5))
    for name, vals in samples.items():
        ax.hist(np.asarray(vals), bins=bins, density=True, histtype="step", lw=1.5, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
