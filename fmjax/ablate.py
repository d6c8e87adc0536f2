"""A harness that compares flow-matching choices on equal terms.

The grid is training t-sampler × inference time grid × solver × steps × CFG weight, repeated over seeds.
Training choices (the t-sampler) are trained once per seed; every inference choice is evaluated on the same
trained model and the same evaluation noise, so differences come from the choice alone. Results are rows of
metrics, summarised as mean ± std over seeds, written as CSV and JSON, and plotted as quality vs NFE.

A *domain* supplies training and evaluation (:class:`Domain`): :class:`ToyDomain` (2-D, sliced W2 and MMD to
fresh data) lives here; the speech-corpus domain (mel L1, MCD, per-t-bin validation loss) builds on the
trainer and lives with it.

CLI::

    python -m fmjax.ablate --out runs/ablate --t-samplers uniform logit_normal --grids linear cosine \\
        --solvers euler --steps 1,2,4,8 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import pathlib
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from fmjax import toy
from fmjax.loss import CFMLoss
from fmjax.paths import CondOTPath
from fmjax.samplers import SOLVERS, get_solver
from fmjax.timesteps import GRIDS, T_SAMPLERS, get_t_sampler, time_grid

__all__ = ["AblationSpec", "Domain", "ToyDomain", "run_ablation", "summarize", "write_results", "plot_quality_vs_nfe",
           "parse_t_sampler", "add_spec_arguments", "spec_from_args", "positive_int"]


@dataclasses.dataclass(frozen=True)
class AblationSpec:
    """What to compare. Names follow :mod:`fmjax.timesteps` and :mod:`fmjax.samplers`.

    Attributes:
      t_samplers: training t-samplers, as names or ``name:key=value,...`` (e.g. ``logit_normal:m=0,s=1``).
      grids: inference grids (``linear``, ``cosine``, ``sway``; ``sway:s=-0.5``).
      solvers: ODE solvers.
      steps: solver steps n (NFE = n · stages).
      cfg_weights: guidance weights (need a conditional domain when non-zero).
      seeds: repetitions; seed s trains with key s and evaluates on noise from key 1000 + s.
    """

    t_samplers: tuple[str, ...] = ("uniform", "logit_normal")
    grids: tuple[str, ...] = ("linear", "cosine")
    solvers: tuple[str, ...] = ("euler",)
    steps: tuple[int, ...] = (1, 2, 4, 8)
    cfg_weights: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self):
        for name in self.t_samplers:
            parse_t_sampler(name)
        for name in self.grids:
            kind, kw = _parse(name)
            if kind not in GRIDS:
                raise ValueError(f"grids: expected names from {sorted(GRIDS)}, got {name!r}")
            time_grid(kind, 2, **kw)
        for name in self.solvers:
            get_solver(name)
        if not self.steps or any((not isinstance(n, int)) or n < 1 for n in self.steps):
            raise ValueError(f"steps: expected ints >= 1, got {self.steps!r}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed")


def _parse(spec: str) -> tuple[str, dict]:
    name, _, args = spec.partition(":")
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = float(value)
        except ValueError as e:
            raise ValueError(f"{spec!r}: expected key=number settings, got {item!r}") from e
    return name, kwargs


def parse_t_sampler(spec: str):
    """``"logit_normal:m=0,s=1"`` → ``LogitNormal(0, 1)``; a ``stratified=1`` setting is allowed."""
    name, kwargs = _parse(spec)
    strat = bool(kwargs.pop("stratified", 0))
    if name not in T_SAMPLERS:
        raise ValueError(f"t_samplers: expected names from {sorted(T_SAMPLERS)}, got {spec!r}")
    return get_t_sampler(name, stratified=strat, **kwargs)


class Domain(Protocol):
    """Training and evaluation for one data domain."""

    conditional: bool

    def train(self, t_sampler, seed: int) -> Any:
        """Trains a model with this training t-sampler and seed; returns whatever ``evaluate`` needs."""

    def evaluate(self, trained: Any, grid, solver: str, cfg_weight: float, seed: int) -> dict[str, float]:
        """Samples with this grid/solver/guidance on the seed's evaluation set and returns metrics."""


@dataclasses.dataclass
class ToyDomain:
    """2-D toy flows: ``source`` → ``target`` with a :class:`fmjax.toy.ToyMLP`.

    Metrics: sliced W2 (``sw2``) and RBF MMD² (``mmd``) between ``n_eval`` samples and fresh target samples
    (per class when conditional). Lower is better.
    """

    source: str = "8gaussians"
    target: str = "moons"
    train_steps: int = 500
    batch: int = 256
    n_eval: int = 2000
    conditional: bool = False
    cfg_rate: float = 0.2

    def train(self, t_sampler, seed: int):
        loss = CFMLoss(path=CondOTPath(0.0), t_sampler=t_sampler, cfg_rate=self.cfg_rate if self.conditional else 0.0)
        return toy.fit_toy_flow(
            jax.random.key(seed), self.source, self.target, steps=self.train_steps, batch=self.batch, loss=loss,
            conditional=self.conditional,
        )

    def evaluate(self, trained, grid, solver, cfg_weight, seed):
        k_noise, k_ref, k_proj = jax.random.split(jax.random.key(1000 + seed), 3)
        cond = None
        if self.conditional:
            ref, labels = toy.get_labeled(self.target)[0](k_ref, self.n_eval)
            cond = toy.one_hot(labels, trained.model.num_classes)
        else:
            ref = toy.get_distribution(self.target)(k_ref, self.n_eval)
        _, x1 = toy.sample_toy(trained, k_noise, self.source, self.n_eval, grid, solver, cond=cond, cfg_weight=cfg_weight)
        if self.conditional:  # compare class by class, so guidance that sharpens the right class scores better
            cls = np.asarray(labels)
            sw2 = float(np.mean([toy.sliced_wasserstein(k_proj, x1[cls == c], ref[cls == c]) for c in np.unique(cls)]))
        else:
            sw2 = float(toy.sliced_wasserstein(k_proj, x1, ref))
        return {"sw2": sw2, "mmd": float(toy.mmd_rbf(x1[:1000], ref[:1000]))}


def run_ablation(domain: Domain, spec: AblationSpec, *, progress: bool = True) -> list[dict]:
    """Runs every cell of ``spec`` on ``domain``; returns one row per (cell, seed) with its metrics."""
    if any(w != 0 for w in spec.cfg_weights) and not domain.conditional:
        raise ValueError("cfg_weights: guidance needs a conditional domain (e.g. ToyDomain(conditional=True))")
    rows = []
    inference = list(itertools.product(spec.grids, spec.solvers, spec.steps, spec.cfg_weights))
    total = len(spec.seeds) * len(spec.t_samplers) * len(inference)
    bar = tqdm(total=total, desc="ablation", unit="cell", disable=not progress)
    for seed in spec.seeds:
        for ts_name in spec.t_samplers:
            trained = domain.train(parse_t_sampler(ts_name), seed)
            for grid_name, solver, n, w in inference:
                kind, kw = _parse(grid_name)
                grid = time_grid(kind, n, **kw)
                metrics = domain.evaluate(trained, grid, solver, w, seed)
                rows.append({"t_sampler": ts_name, "grid": grid_name, "solver": solver, "steps": n,
                             "nfe": n * SOLVERS[solver].stages, "cfg": w, "seed": seed, **metrics})
                bar.update()
    bar.close()
    return rows


_KEYS = ("t_sampler", "grid", "solver", "steps", "nfe", "cfg")


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every metric, one row per cell (same order as ``rows``)."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault(tuple(r[k] for k in _KEYS), []).append(r)
    metrics = [k for k in rows[0] if k not in _KEYS + ("seed",)] if rows else []
    out = []
    for key, group in cells.items():
        row = dict(zip(_KEYS, key), n_seeds=len(group))
        for m in metrics:
            vals = np.array([g[m] for g in group], np.float64)
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def write_results(rows: Sequence[dict], out_dir, spec: AblationSpec | None = None) -> dict[str, pathlib.Path]:
    """Writes ``rows.csv`` (per seed), ``summary.csv`` and ``results.json``; returns their paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    paths = {"rows": out / "rows.csv", "summary": out / "summary.csv", "json": out / "results.json"}
    for name, table in (("rows", rows), ("summary", summary)):
        with open(paths[name], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    payload = {"spec": dataclasses.asdict(spec) if spec else None, "rows": list(rows), "summary": summary}
    paths["json"].write_text(json.dumps(payload, indent=2))
    return paths


def plot_quality_vs_nfe(rows: Sequence[dict], path, metric: str = "sw2", title: str = "") -> pathlib.Path:
    """One line per (t-sampler, grid, solver, cfg): metric mean ± std over seeds against NFE (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple, list[dict]] = {}
    for r in summary:
        groups.setdefault((r["t_sampler"], r["grid"], r["solver"], r["cfg"]), []).append(r)
    for (ts, grid, solver, cfg), g in groups.items():
        g = sorted(g, key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in g]
        mean = np.array([r[f"{metric}_mean"] for r in g])
        std = np.array([r[f"{metric}_std"] for r in g])
        label = f"train t: {ts} | grid: {grid} | {solver}" + (f" | cfg {cfg:g}" if cfg else "")
        ax.errorbar(nfe, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE (velocity evaluations)")
    ax.set_ylabel(f"{metric} (lower is better), mean ± std over seeds")
    ax.set_title(title or f"{metric} vs NFE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _list_of(kind, what: str):
    """An argparse type for comma-separated values (``1,2,4,8``), with a one-line usage error."""
    def parse(text: str):
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (e.g. {'1,2,4' if kind is int else '0,0.7'}),"
                                             f" got {text!r}") from None
        if not values or (kind is float and not all(np.isfinite(values))):
            raise argparse.ArgumentTypeError(f"expected comma-separated finite {what}, got {text!r}")
        return values

    return parse


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1, else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def add_spec_arguments(ap: argparse.ArgumentParser, *, cfg: str = "0") -> None:
    """The :class:`AblationSpec` options of a CLI (``--t-samplers --grids --solvers --steps --cfg --seeds``).

    Lists of names are space-separated; parameters after a colon are comma-separated ``key=value`` pairs
    (``logit_normal:m=0,s=1``). Lists of numbers are one comma-separated argument (``--steps 1,2,4,8``)."""
    ap.add_argument("--t-samplers", nargs="+", default=["uniform", "logit_normal"], metavar="NAME[:k=v,...]",
                    help="training t-samplers, space-separated; parameters after a colon, comma-separated, e.g. "
                         f"uniform logit_normal:m=0,s=1 (names: {', '.join(sorted(T_SAMPLERS))}; "
                         "default: uniform logit_normal)")
    ap.add_argument("--grids", nargs="+", default=["linear", "cosine"], metavar="NAME[:k=v,...]",
                    help=f"inference time grids, space-separated, e.g. linear cosine sway:s=-0.5 (names: "
                         f"{', '.join(sorted(GRIDS))}; default: linear cosine)")
    ap.add_argument("--solvers", nargs="+", default=["euler"], metavar="NAME",
                    help=f"ODE solvers, space-separated ({', '.join(sorted(SOLVERS))}; default: euler)")
    ap.add_argument("--steps", default=(1, 2, 4, 8), type=_list_of(int, "ints >= 1"), metavar="N,N,...",
                    help="solver steps, comma-separated; NFE = steps x solver stages (default: 1,2,4,8)")
    ap.add_argument("--cfg", default=tuple(float(x) for x in cfg.split(",")), type=_list_of(float, "weights"),
                    metavar="W,W,...", help=f"classifier-free guidance weights, comma-separated (default: {cfg})")
    ap.add_argument("--seeds", default=(0, 1, 2), type=_list_of(int, "ints"), metavar="S,S,...",
                    help="seeds, comma-separated; seed s trains with key s and evaluates on the noise of key "
                         "1000 + s (default: 0,1,2)")


def spec_from_args(args: argparse.Namespace) -> AblationSpec:
    """The spec of options added by :func:`add_spec_arguments`."""
    return AblationSpec(tuple(args.t_samplers), tuple(args.grids), tuple(args.solvers), args.steps, args.cfg,
                        args.seeds)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fmjax.ablate", description=__doc__.split("\n\n")[0] + "\n\n"
                                 + __doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n" + __doc__.split("CLI::")[1].strip("\n"))
    ap.add_argument("--out", required=True, help="output directory: results CSV and JSON, sw2_vs_nfe.png (required)")
    add_spec_arguments(ap)
    names = ", ".join(sorted(toy.DISTRIBUTIONS))
    ap.add_argument("--source", default="8gaussians", help=f"2-D source distribution x0 ({names}; default: 8gaussians)")
    ap.add_argument("--target", default="moons", help=f"2-D target distribution x1 (same names; default: moons)")
    ap.add_argument("--train-steps", default=500, type=positive_int,
                    help="training steps per (t-sampler, seed) model (default: 500)")
    ap.add_argument("--conditional", action="store_true",
                    help="class-conditional toy, needed for --cfg weights other than 0 (default: off)")
    args = ap.parse_args(argv)
    try:
        spec = spec_from_args(args)
        for name in (args.source, args.target):
            toy.get_distribution(name)
    except (ValueError, TypeError) as err:
        ap.error(" ".join(str(err).split()))
    if pathlib.Path(args.out).is_file():
        ap.error(f"--out: expected a directory, {args.out!r} is a file")
    domain = ToyDomain(args.source, args.target, args.train_steps, conditional=args.conditional)
    rows = run_ablation(domain, spec)
    paths = write_results(rows, args.out, spec)
    png = plot_quality_vs_nfe(rows, pathlib.Path(args.out) / "sw2_vs_nfe.png", title=f"{args.source} → {args.target}")
    for r in summarize(rows):
        print(f"{r['t_sampler']:>14} {r['grid']:>8} {r['solver']:>8} nfe={r['nfe']:<3} cfg={r['cfg']:<4g} "
              f"sw2={r['sw2_mean']:.4f}±{r['sw2_std']:.4f}")
    print("wrote", *paths.values(), png)


if __name__ == "__main__":
    main()
