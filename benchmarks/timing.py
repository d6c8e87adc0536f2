"""Interleaved side-by-side timing: two callables measured alternately in one process, so that both see the same
machine load, with the ratio taken per round.

    res = interleaved({"torch": run_torch, "fmjax": run_fmjax}, rounds=5, warmup=1)
    rows.append(sidebyside_row("estimator T=100", res, diff=err))
    print_sidebyside(rows, title="...");  write_json("bench_x", {"rows": rows})      # common.write_json

Each callable is warmed up ``warmup`` times (A's warm-ups, then B's: compilation and first-touch allocation
stay out of the timings), then timed in rounds A, B, A, B, ... (B first in odd rounds with ``alternate_order``,
which cancels a steady drift in load). Outputs are waited for (``jax.block_until_ready`` on every leaf; torch
on the CPU is synchronous) before the clock stops. ``gc.collect()`` runs untimed before every call. The
1-minute load average is read at the start and at the end: quote it with the numbers.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import jax

from common import print_table

COLUMNS = ("case", "torch_s", "fmjax_s", "ratio", "ratio_min", "ratio_max", "rounds", "diff", "load_start",
           "load_end")


def loadavg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def interleaved(fns: Mapping[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 1,
                alternate_order: bool = True) -> dict:
    """Times two zero-argument callables alternately.

    Args:
      fns: ``{name_a: fn_a, name_b: fn_b}`` (order matters: the ratio is ``a / b``, i.e. with torch first
        it is fmjax's speed-up).
      rounds: timed calls of each (>= 1).
      warmup: untimed calls of each before the first round (>= 0; 0 for procedures too long to repeat).
      alternate_order: B before A in odd rounds.

    Returns:
      ``{name: {"median_s", "min_s", "max_s", "times"}, "ratio_median": median over rounds of a_i / b_i,
      "ratio_min", "ratio_max", "ratio_of_medians", "names", "rounds", "warmup", "load_start", "load_end",
      "outputs": {name: output of its last timed call}}``.

    Raises:
      ValueError: not exactly two callables, or rounds < 1 or warmup < 0.
    """
    if len(fns) != 2 or not all(callable(f) for f in fns.values()):
        raise ValueError(f"fns: expected a mapping of exactly two names to callables, got {list(fns)}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds/warmup: expected rounds >= 1 and warmup >= 0, got {rounds}/{warmup}")
    (na, fa), (nb, fb) = fns.items()
    load_start = loadavg()
    for name, fn in ((na, fa), (nb, fb)):
        for _ in range(warmup):
            _timed(fn)
    times: dict[str, list[float]] = {na: [], nb: []}
    outputs: dict[str, object] = {}
    for r in range(rounds):
        order = ((nb, fb), (na, fa)) if alternate_order and r % 2 else ((na, fa), (nb, fb))
        for name, fn in order:
            seconds, outputs[name] = _timed(fn)
            times[name].append(seconds)
    ratios = [a / b for a, b in zip(times[na], times[nb])]
    out = {name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times": ts}
           for name, ts in times.items()}
    out.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
               ratio_of_medians=out[na]["median_s"] / out[nb]["median_s"], names=[na, nb], rounds=rounds,
               warmup=warmup, load_start=load_start, load_end=loadavg(), outputs=outputs)
    return out


def sidebyside_row(case: str, res: dict, **extra) -> dict:
    """A table/JSON row from :func:`interleaved`'s result: ``<a>_s``, ``<b>_s`` (medians), ``ratio`` (the
    per-round median a/b) with its range, rounds, load at start/end, plus ``extra`` (e.g. ``diff=`` the max abs
    output difference, ``torch_first_chunk_s=``)."""
    na, nb = res["names"]
    row = {"case": case, f"{na}_s": res[na]["median_s"], f"{nb}_s": res[nb]["median_s"],
           "ratio": res["ratio_median"], "ratio_min": res["ratio_min"], "ratio_max": res["ratio_max"],
           "rounds": res["rounds"], "load_start": res["load_start"], "load_end": res["load_end"]}
    row.update(extra)
    return row


def print_sidebyside(rows: Sequence[dict], title: str = "", columns: Sequence[str] | None = None) -> None:
    """Prints rows with :data:`COLUMNS` (plus any extra keys the rows carry), via ``common.print_table``."""
    cols = list(columns or COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols]
    print_table(rows, cols, title=title)


def json_ready(res: dict) -> dict:
    """:func:`interleaved`'s result without the outputs (arrays), for ``common.write_json``."""
    return {k: v for k, v in res.items() if k != "outputs"}
