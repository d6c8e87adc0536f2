"""PNG figures of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib
import time

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_loss_curve", "plot_points", "plot_speech_metrics", "SPEECH_METRICS"]


def plot_loss_curve(rows: list[dict], path, title: str = "") -> pathlib.Path:
    """Training (and validation) loss against step on a log y-axis (a non-positive loss: linear, the first 10 % of
    steps cropped), and the latest validation loss per flow-time bin; titled with the experiment, the last step
    and the date.

    Args:
      rows: ``metrics.jsonl`` rows (:func:`train.metrics.read_metrics`).
      path: the PNG to write.
    """
    train = [r for r in rows if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in rows if r.get("kind") == "eval" and "val_loss" in r]
    per_t = [r for r in evals if "val_loss_per_t" in r]
    fig, axes = plt.subplots(1, 2 if per_t else 1, figsize=(11 if per_t else 6, 4), squeeze=False)
    ax = axes[0, 0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
    values = [r["loss"] for r in train] + [r["val_loss"] for r in evals]
    if values and min(values) > 0:  # a log axis: the first steps' loss would flatten everything after them
        ax.set_yscale("log")
    elif len(train) > 10:  # a loss that is not positive: linear, with the first 10 % of steps cropped
        tail = [r["loss"] for r in train[len(train) // 10:]] + [r["val_loss"] for r in evals]
        pad = 0.05 * (max(tail) - min(tail) or 1.0)
        ax.set_ylim(min(tail) - pad, max(tail) + pad)
    steps = [r["step"] for r in train + evals]
    last_step = max(steps) if steps else 0
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (MSE)" + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"{title + ': ' if title else ''}train and validation loss, steps 1-{last_step}")
    if ax.get_yscale() == "log":  # plain numbers on the ticks, not powers of ten
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if per_t:
        last = per_t[-1]
        values = np.asarray(last["val_loss_per_t"], float)
        centres = (np.arange(values.size) + 0.5) / values.size
        ax = axes[0, 1]
        ax.plot(centres, values, "o-")
        ax.set_xlabel("flow time t (0 = noise, 1 = data)")
        ax.set_ylabel("validation loss")
        ax.set_title(f"validation loss per t-bin at step {last['step']}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{title or 'run'} at step {last_step} ({time.strftime('%Y-%m-%d %H:%M')})", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# (key, label, better, log y): the generation metrics of train.corpus_experiment (val_<key>, with _baseline,
# _lookup and, where the ceiling is not 0 by construction, _truth)
SPEECH_METRICS = (("mel_l1", "mel L1", "lower", False), ("mcd", "MCD (dB)", "lower", False),
                  ("ter", "token error rate", "lower", False), ("spk_acc", "speaker accuracy", "higher", False),
                  ("spk_cos", "speaker cosine", "higher", False), ("fd", "Fréchet distance (realism)", "lower", True),
                  ("vuv_error", "V/UV error", "lower", False), ("f0_rmse", "F0 RMSE (cents)", "lower", False))


def plot_speech_metrics(rows: list[dict], path, title: str = "") -> pathlib.Path | None:
    """Every generation metric of a corpus run against training step (``metrics.jsonl`` eval rows with
    ``val_<key>``), one panel per metric: the model (points), the speaker-mean baseline, the lookup decoder and the
    ground truth (horizontal lines; the truth is 0 for mel L1, MCD, TER, V/UV and F0 by construction). The
    Fréchet distance is on a log axis (the speaker mean's is ~50x the truth's). Returns None (nothing written)
    when no row has any of the metrics.

    Args:
      rows: ``metrics.jsonl`` rows (:func:`train.metrics.read_metrics`).
      path: the PNG to write.
    """
    evals = [r for r in rows if r.get("kind") == "eval"]
    panels = [m for m in SPEECH_METRICS if any(f"val_{m[0]}" in r for r in evals)]
    if not panels:
        return None
    cols = 4
    n_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3.3 * n_rows), squeeze=False)
    last = max(r["step"] for r in evals)
    for ax, (key, label, better, log_y) in zip(axes.flat, panels):
        have = [r for r in evals if f"val_{key}" in r]
        steps = [r["step"] for r in have]
        ax.plot(steps, [r[f"val_{key}"] for r in have], "o-", color="C0", label="model")
        ref = have[-1]
        truth = ref.get(f"val_{key}_truth", 0.0)
        for value, name, style in ((ref.get(f"val_{key}_baseline"), "speaker mean", ("C3", "--")),
                                   (ref.get(f"val_{key}_lookup"), "lookup", ("C2", "--")),
                                   (truth, "ground truth", ("k", ":"))):
            if value is not None and not (log_y and value <= 0):
                ax.axhline(value, color=style[0], linestyle=style[1], label=f"{name} {value:.3g}")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlim(0, last * 1.05)
        ax.set_xlabel("step")
        ax.set_title(f"{label} ({better} is better)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{title or 'run'}: generation metrics vs step, steps up to {last} "
                 f"({time.strftime('%Y-%m-%d %H:%M')})", fontsize=11)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_points(clouds: dict[str, np.ndarray], path, title: str, limit: float = 3.5) -> pathlib.Path:
    """Side-by-side 2-D scatter plots, one panel per named ``[p, 2]`` point cloud, on a shared square box."""
    fig, axes = plt.subplots(1, len(clouds), figsize=(4 * len(clouds), 4.3), squeeze=False)
    for ax, (name, pts) in zip(axes[0], clouds.items()):
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
