"""Scan sampler vs a Python loop of jitted steps, and compile times.

    python benchmarks/bench_sampler.py [--quick]

The velocity is a per-frame 2-layer MLP on mel-shaped input ``[b=2, t=500, m=80]`` (the CFG pair of a 10-s
utterance), so the per-step work is small and dispatch overhead is visible: this is where a ``lax.scan``
sampler pays off. Prints a table and writes ``benchmarks/results/bench_sampler.json``.
"""

from __future__ import annotations

import argparse
import sys
import pathlib

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import print_table, time_call, time_compile, write_json  # noqa: E402

from fmjax import samplers  # noqa: E402
from fmjax.timesteps import cosine_grid  # noqa: E402


def make_velocity(width: int, m: int = 80):
    k1, k2 = jax.random.split(jax.random.key(0))
    w1 = jax.random.normal(k1, (m, width)) / jnp.sqrt(m)
    w2 = jax.random.normal(k2, (width, m)) / jnp.sqrt(width)

    def velocity(t, x, cond):
        h = jnp.tanh(x @ w1 + t[:, None, None])  # [b, t, width]
        return h @ w2 + cond

    return velocity


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and cases")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    velocity = make_velocity(256)
    x0 = jax.random.normal(jax.random.key(1), (2, 500, 80))
    cond = jnp.zeros_like(x0)
    rows = []
    for solver in ("euler", "midpoint", "rk4"):
        for n in ((10,) if args.quick else (10, 32)):
            grid = jnp.asarray(cosine_grid(n))
            scan_fn = jax.jit(lambda x0, g, s=solver: samplers.sample(velocity, x0, cond, g, s)[0])
            compile_scan = time_compile(scan_fn, x0, grid)
            step = jax.jit(lambda x, t, dt, s=samplers.get_solver(solver): samplers.rk_step(s, velocity, t, dt, x, cond))
            compile_step = time_compile(step, x0, grid[0], grid[1] - grid[0])

            def loop():
                x = x0
                for i in range(n):
                    x = step(x, grid[i], grid[i + 1] - grid[i])
                return x

            t_scan = time_call(lambda: scan_fn(x0, grid), repeats=repeats)
            t_loop = time_call(loop, repeats=repeats)
            rows.append({
                "solver": solver, "steps": n, "nfe": samplers.count_nfe(n + 1, solver),
                "scan_ms": 1e3 * t_scan["median_s"], "loop_ms": 1e3 * t_loop["median_s"],
                "loop/scan": t_loop["median_s"] / t_scan["median_s"],
                "compile_scan_s": compile_scan, "compile_step_s": compile_step,
            })
    cols = ["solver", "steps", "nfe", "scan_ms", "loop_ms", "loop/scan", "compile_scan_s", "compile_step_s"]
    print_table(rows, cols, title="scan sampler vs Python loop of jitted steps (median of %d)" % repeats)
    write_json("bench_sampler", {"shape": list(x0.shape), "mlp_width": 256, "rows": rows})


if __name__ == "__main__":
    main()
