"""Shared benchmark helpers: timing with medians, machine facts, a printed table and a JSON record.

Machines are noisy: every figure is a median over repeats measured in one run, and comparisons are quoted
as ratios measured in the same process.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax

RESULTS = pathlib.Path(__file__).parent / "results"


def block(x):
    """Waits for every array in a pytree (asynchronous dispatch would otherwise hide the work)."""
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> dict:
    """Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times; returns median/min/max seconds."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def time_train_steps(step, state, batches: Sequence, key, *, steps: int, repeats: int) -> tuple[dict, float]:
    """Times windows of ``steps`` calls ``state, metrics = step(state, batches[i % len(batches)], key)`` (the state
    threaded through, as in training; a donated state is consumed). Returns ``(time_call's dict, median s/step)``."""
    holder = [state]

    def window():
        for i in range(steps):
            holder[0], metrics = step(holder[0], batches[i % len(batches)], key)
        return metrics

    t = time_call(window, repeats=repeats)
    return t, t["median_s"] / steps


def time_compile(jitted, *args, **kwargs) -> float:
    """Seconds to lower and compile ``jitted`` for these arguments (no execution)."""
    t0 = time.perf_counter()
    jitted.lower(*args, **kwargs).compile()
    return time.perf_counter() - t0


def machine() -> dict:
    """Facts that make a timing interpretable."""
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    """Prints ``rows`` as an aligned text table with the given columns."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(name: str, payload: dict) -> pathlib.Path:
    """Writes ``benchmarks/results/<name>.json`` with the machine facts added; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
