"""Training throughput of CosyVoice2's flow: the jitted train step (unified chunk/full CFM loss fwd + bwd + clip +
AdamW + EMA) of the **full-size** flow (112.5 M parameters, vocabulary 6561) on random tokens at batch 4 x 500 mel
frames, and of the ``token2mel`` experiment's presets on corpus batches; compile time and peak memory.

    python benchmarks/bench_train_flow.py [--quick] [--cases full tiny default]

Each case runs in its own subprocess, so that ``peak_rss_mb`` (the process's maximum resident set size) belongs to
that case alone. ``frames/s`` counts the mel frames of a batch including padding (the work done); ``valid
frames/s`` only the frames inside the utterances (corpus batches are padded to their bucket). Prints a table and
writes ``benchmarks/results/bench_train_flow.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

CASES = ("full", "tiny", "default")
FULL_BATCH, FULL_FRAMES = 4, 500


def _random_batches(cfg, n: int, seed: int = 0) -> list[dict]:
    """``n`` batches of random tokens, mels and speaker vectors at ``FULL_BATCH x FULL_FRAMES`` (no padding)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, u = FULL_BATCH, FULL_FRAMES // cfg.token_mel_ratio
    return [{
        "tokens": rng.integers(0, cfg.vocab_size, (b, u)).astype(np.int32),
        "token_len": np.full((b,), u, np.int32),
        "mel": rng.normal(-4.0, 2.0, (b, FULL_FRAMES, cfg.mel_dim)).astype(np.float32),
        "mel_mask": np.ones((b, FULL_FRAMES), np.float32),
        "spk": rng.normal(size=(b, cfg.spk_embed_dim)).astype(np.float32),
        "row_mask": np.ones((b,), np.float32),
    } for _ in range(n)]


def measure(case: str, steps: int, repeats: int) -> dict:
    """One case in this process: build, compile, time ``repeats`` windows of ``steps`` steps."""
    import jax
    import numpy as np
    from common import time_compile, time_train_steps

    from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
    from fmjax.token2mel import COSYVOICE2_LOSS, flow_loss
    from train.configs import token2mel
    from train.optim import make_optimizer, make_schedule
    from train.sharding import make_mesh, shard_batch, state_shardings
    from train.state import abstract_state, create_state
    from train.step import jit_train_step, make_train_step

    if case == "full":
        cfg = token2mel.get_config("tiny")  # its optimizer settings; the model is the full-size flow
        model = CosyVoice2Flow(Token2MelConfig())
        init_params = lambda key: init_flow_params(model, key)  # noqa: E731
        loss_fn = lambda p, batch, key: flow_loss(model, p, batch, key, loss=COSYVOICE2_LOSS)  # noqa: E731
        host = _random_batches(model.config, 2)
    else:
        cfg = token2mel.get_config(case)
        exp = token2mel.build(cfg)
        init_params, loss_fn = exp.init_params, exp.loss_fn
        stream = exp.train_batches(cfg.train.seed, 0)
        host = [next(stream)[0] for _ in range(8)]
    mesh = make_mesh(1)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps), make_schedule(cfg.optim, cfg.train.steps)
    key = jax.random.key(0)
    abstract = abstract_state(init_params, optimizer, key)
    shardings = state_shardings(abstract, mesh)
    t0 = time.perf_counter()
    state = jax.block_until_ready(create_state(init_params, optimizer, key, shardings))
    init_s = time.perf_counter() - t0
    step = jit_train_step(make_train_step(loss_fn, optimizer, schedule, ema_decay=cfg.optim.ema_decay), shardings,
                          mesh)
    batches = [shard_batch(b, mesh) for b in host]
    compile_s = time_compile(step, state, batches[0], key)

    t, per_step = time_train_steps(step, state, batches, key, steps=steps, repeats=repeats)
    used = [batches[i % len(batches)] for i in range(steps)]
    frames = float(np.mean([b["mel_mask"].size for b in used]))
    valid = float(np.mean([np.sum(b["mel_mask"]) for b in used]))
    return {
        "case": case, "params": int(sum(x.size for x in jax.tree.leaves(abstract.params))),
        "batch": f"{host[0]['mel'].shape[0]} x {host[0]['mel'].shape[1]}", "step_s": per_step,
        "frames/s": frames / per_step, "valid frames/s": valid / per_step, "compile_s": compile_s, "init_s": init_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--quick", action="store_true", help="2 repeats of 2 steps")
    ap.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case, print its JSON row
    args = ap.parse_args()
    steps, repeats = (2, 2) if args.quick else (5, 3)
    if args.one:
        print(json.dumps(measure(args.one, steps if args.one != "full" else 2, repeats)))
        return
    from common import print_table, write_json

    rows = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cols = ["case", "params", "batch", "step_s", "frames/s", "valid frames/s", "compile_s", "init_s", "peak_rss_mb"]
    print_table(rows, cols, title="CosyVoice2 flow train step: unified CFM loss fwd + bwd + clip + AdamW + EMA, fp32, "
                                  "1 CPU device (median over windows)")
    write_json("bench_train_flow", {"rows": rows, "full_batch": [FULL_BATCH, FULL_FRAMES]})


if __name__ == "__main__":
    main()
