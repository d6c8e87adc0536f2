"""Measured comparison of few-step students with their teacher on the corpus (issue 14, item 4): every model sampled
at several NFEs over several noise seeds (and student training seeds), scored by the corpus metrics
(:meth:`train.corpus_experiment.CorpusExperiment.score`: mel L1, MCD, TER, speaker accuracy/cosine, Fréchet distance,
V/UV, F0), aggregated as mean ± std, with the training cost of each model and a plot of quality against NFE.

``benchmarks/students_corpus.py`` is the command line; notebook 03 plots its JSON with :func:`plot_quality_vs_nfe`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax
import numpy as np

from fmjax.checkpoint import load_flow
from fmjax.samplers import SamplerConfig
from fmjax.token2mel import token2mel

__all__ = ["Entry", "evaluate", "summarise", "references", "training_cost", "plot_quality_vs_nfe", "METRIC_KEYS"]

METRIC_KEYS = ("mel_l1", "mcd", "ter", "spk_acc", "spk_cos", "fd", "vuv_error", "f0_rmse")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One curve of the comparison: ``label`` (e.g. ``"MeanFlow student"``), the workdirs or flow checkpoints of its
    models (one per training seed) and the sampler at each NFE (``grid``, ``solver``, ``cfg_weight``)."""

    label: str
    paths: tuple[str, ...]
    nfes: tuple[int, ...]
    grid: str = "cosine"
    solver: str = "euler"
    cfg_weight: float = 0.0


def evaluate(exp, entries, noise_seeds=(0, 1), *, progress=print) -> list[dict]:
    """Scores every (entry, model, NFE, noise seed): rows ``{label, path, nfe, seed, grid, solver, cfg, val_* ...}``.

    ``exp`` is a built corpus experiment (its evaluation sentences, prompts and scorer are used; its own model is
    not); the noise of seed ``s`` is ``jax.random.key(s)`` drawn per row."""
    rows = []
    inputs = exp.generation_inputs()
    for entry in entries:
        for path in entry.paths:
            loaded = load_flow(path, ema=True, what=entry.label)
            for nfe in entry.nfes:
                sampler = SamplerConfig(entry.grid, nfe, entry.solver, entry.cfg_weight)
                for seed in noise_seeds:
                    out = token2mel(loaded.model, loaded.params, **inputs, sampler=sampler, key=jax.random.key(seed))
                    scores = exp.score(np.asarray(jax.device_get(out.mel)))
                    rows.append({"label": entry.label, "path": str(path), "nfe": nfe, "seed": seed,
                                 "grid": entry.grid, "solver": entry.solver, "cfg": entry.cfg_weight,
                                 **{k: v for k, v in scores.items() if k.startswith("val_")}})  # refs too
                    if progress:
                        progress(f"{entry.label} NFE {nfe} seed {seed} ({pathlib.Path(path).name}): mel L1 "
                                 f"{scores['val_mel_l1']:.4f}, TER {scores.get('val_ter', float('nan')):.4f}")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std (over models and noise seeds; ``ddof=1``) of every metric per (label, NFE)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["nfe"]), []).append(r)
    out = []
    for (label, nfe), rs in groups.items():
        row = {"label": label, "nfe": nfe, "n": len(rs), "cfg": rs[0]["cfg"], "solver": rs[0]["solver"],
               "grid": rs[0]["grid"]}
        for k in METRIC_KEYS:
            vals = [r[f"val_{k}"] for r in rs if f"val_{k}" in r]
            if vals:
                row[f"{k}_mean"] = float(np.mean(vals))
                row[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def references(rows: list[dict]) -> dict:
    """The speaker-mean baseline (``speaker mean``), the lookup decoder (``lookup``) and the ground-truth ceilings
    (``ground truth``) of the evaluated sentences, from the first row (they do not depend on the model)."""
    r = rows[0]
    return {name: {k: r[f"val_{k}_{suffix}"] for k in METRIC_KEYS if f"val_{k}_{suffix}" in r}
            for name, suffix in (("speaker mean", "baseline"), ("lookup", "lookup"), ("ground truth", "truth"))}


def training_cost(path) -> dict:
    """The cost of a trainer run: steps (its ``done.json`` or last metrics row) and, when the run was wrapped in GNU
    ``/usr/bin/time -v`` with its output in ``<workdir>.log``, user + system CPU seconds and wall seconds."""
    path = pathlib.Path(path)
    cost: dict = {"path": str(path)}
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        steps = [json.loads(line).get("step") for line in metrics.read_text().splitlines() if line.strip()]
        cost["steps"] = max((s for s in steps if isinstance(s, int)), default=None)
    log = path.with_suffix(".log")
    if log.is_file():
        text = log.read_text(errors="replace")
        user = re.search(r"User time \(seconds\): ([\d.]+)", text)
        system = re.search(r"System time \(seconds\): ([\d.]+)", text)
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
        if user and system:
            cost["cpu_s"] = float(user.group(1)) + float(system.group(1))
        if wall:
            parts = [float(p) for p in wall.group(1).split(":")]
            cost["wall_s"] = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return cost


def plot_quality_vs_nfe(summary: list[dict], path=None, *, metrics=("mel_l1", "ter"), references: dict | None = None):
    """Quality against NFE, one panel per metric: a line with ±1 std error bars per label; ``references`` (e.g. the
    speaker-mean and lookup values, ``{"speaker mean": {"mel_l1": ..}, ...}``) as horizontal lines. Returns the
    figure (saved to ``path`` when given)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8))
    axes = np.atleast_1d(axes)
    labels = list(dict.fromkeys(r["label"] for r in summary))
    for ax, metric in zip(axes, metrics):
        for label in labels:
            rs = sorted((r for r in summary if r["label"] == label and f"{metric}_mean" in r), key=lambda r: r["nfe"])
            if rs:
                ax.errorbar([r["nfe"] for r in rs], [r[f"{metric}_mean"] for r in rs],
                            yerr=[r[f"{metric}_std"] for r in rs], marker="o", capsize=3, label=label)
        for i, (name, values) in enumerate((references or {}).items()):
            if metric in values:
                ax.axhline(values[metric], ls="--", lw=1, color=f"C{len(labels) + i}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE (network evaluations per sample; a CFG pair counts once)")
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("corpus: quality against NFE (mean ± std over seeds)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
