"""Training throughput of an experiment preset: the jitted train step (fwd + bwd + AdamW + EMA), its compile time
and memory, the host batch pipeline (make + check-free placement, per batch), and a complete ``train.loop.run``
(compile, eval, checkpoints, plots).

    python benchmarks/bench_train.py [--quick] [--config toy2d] [--preset tiny] [--set key=value ...]

Prints a table and writes ``benchmarks/results/bench_train.json``. ``examples/s`` counts batch rows; sequence
experiments should add their frames per step via ``--frames-leaf`` (the batch leaf whose ``[b, t, ...]`` valid
frames are counted through its mask, e.g. ``mel_mask``), which also reports frames/s.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import resource
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import print_table, time_compile, time_train_steps, write_json  # noqa: E402

from train.config import apply_overrides  # noqa: E402
from train.experiment import load_experiment  # noqa: E402
from train.loop import run  # noqa: E402
from train.optim import make_optimizer, make_schedule  # noqa: E402
from train.sharding import make_mesh, shard_batch, state_shardings  # noqa: E402
from train.state import abstract_state, create_state  # noqa: E402
from train.step import jit_train_step, make_train_step  # noqa: E402


def bench_step(module, cfg, *, steps: int, repeats: int, frames_leaf: str | None) -> dict:
    """The jitted step alone on pre-placed batches, and the host pipeline (make + place batches)."""
    exp = module.build(cfg)
    tc = cfg.train
    mesh = make_mesh(tc.num_devices)
    optimizer, schedule = make_optimizer(cfg.optim, tc.steps), make_schedule(cfg.optim, tc.steps)
    key = jax.random.key(tc.seed)
    abstract = abstract_state(exp.init_params, optimizer, key)
    shardings = state_shardings(abstract, mesh, tc.fsdp)
    state = create_state(exp.init_params, optimizer, key, shardings)
    step = jit_train_step(make_train_step(exp.loss_fn, optimizer, schedule, ema_decay=cfg.optim.ema_decay,
                                          compute_dtype=tc.compute_dtype), shardings, mesh)
    stream = exp.train_batches(tc.seed, 0)
    next(stream)  # warm up (compiles the experiment's data functions)
    t0 = time.perf_counter()
    host = [b for b, _ in itertools.islice(stream, max(steps, 256))]  # spans experiments' batch chunks
    batches = [shard_batch(b, mesh) for b in host]
    pipeline_s = (time.perf_counter() - t0) / len(host)
    host, batches = host[:8], batches[:8]
    compile_s = time_compile(step, state, batches[0], key)
    memory = step.lower(state, batches[0], key).compile().memory_analysis()
    frames = None
    if frames_leaf:
        frames = float(np.mean([np.sum(b[frames_leaf]) for b in host]))

    t, per_step = time_train_steps(step, state, batches, key, steps=steps, repeats=repeats)
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    row = {
        "params": n_params, "batch": tc.batch_size, "dtype": tc.compute_dtype, "devices": mesh.size,
        "step_ms": 1e3 * per_step, "steps/s": 1 / per_step, "examples/s": tc.batch_size / per_step,
        "compile_s": compile_s, "host_batch_ms": 1e3 * pipeline_s,
        "temp_mb": getattr(memory, "temp_size_in_bytes", 0) / 2**20,
        "args_mb": getattr(memory, "argument_size_in_bytes", 0) / 2**20,
    }
    if frames is not None:
        row["frames/s"] = frames / per_step
    return row


def bench_run(module, cfg) -> dict:
    """A whole ``train.loop.run`` of the preset in a fresh workdir (what the CLI does, minus imports)."""
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        result = run(module.build(cfg), workdir, progress=False)
        wall = time.perf_counter() - t0
    return {"run_steps": result.step, "run_s": wall, "run_steps/s": result.step / wall, "compiles": result.compiles}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats; skip the full run")
    ap.add_argument("--config", default="toy2d")
    ap.add_argument("--preset", action="append", help="presets to measure (default: tiny)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--frames-leaf", default=None, help="batch mask leaf whose sum counts frames (sequence data)")
    ap.add_argument("--steps", type=int, default=50, help="steps per timed window")
    args = ap.parse_args()
    module = load_experiment(args.config)
    rows = []
    for preset in args.preset or ["tiny"]:
        cfg = apply_overrides(module.get_config(preset), args.set)
        row = {"experiment": args.config, "preset": preset}
        row.update(bench_step(module, cfg, steps=args.steps, repeats=3 if args.quick else 7,
                              frames_leaf=args.frames_leaf))
        if not args.quick:
            row.update(bench_run(module, cfg))
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
    cols = ["experiment", "preset", "params", "batch", "dtype", "devices", "step_ms", "steps/s", "examples/s",
            "frames/s", "compile_s", "host_batch_ms", "temp_mb", "run_steps", "run_s", "compiles", "peak_rss_mb"]
    print_table(rows, [c for c in cols if any(c in r for r in rows)],
                title="train step: fwd + bwd + clip + AdamW + EMA (median over windows)")
    write_json("bench_train", {"overrides": args.set, "rows": rows})


if __name__ == "__main__":
    main()
