"""Training throughput of CosyVoice2's flow: the jitted train step (unified chunk/full CFM loss fwd + bwd + clip +
AdamW + EMA) of the **full-size** flow (112.5 M parameters, vocabulary 6561) on random tokens at batch 4 x 500 mel
frames, and of the ``token2mel`` experiment's presets on corpus batches; compile time and peak memory.

    python benchmarks/bench_train_flow.py [--quick] [--cases full tiny tiny_full tiny_chunked tiny_batch default]
        [--baseline /path/to/an/older/fmjax/checkout] [--rounds 2] [--cosyvoice PATH [--matcha PATH]]

Cases: ``full`` (below), the ``token2mel`` presets ``tiny`` / ``default`` (unified training: chunk masks or full
context drawn per row), and the tiny preset with every row full-context (``tiny_full``), every row chunk-masked
(``tiny_chunked``) or the mode drawn per batch (``tiny_batch``, CosyVoice2's draw). Chunk masks are data, so the
unified step should cost what a single-mode step costs (issue 11: <= 1.1x the faster one, ratio in one run).
With ``--baseline`` the same cases also run on another checkout of fmjax (e.g. the commit before the estimator
contract landed), alternating with this one in ``--rounds`` rounds, and the table gains their times and the
ratios. (On such an older checkout ``tiny`` is its ``unified="rows"`` preset and ``tiny_batch`` its per-batch
``lax.cond``.)

With ``--cosyvoice`` the ``full`` case also runs CosyVoice2's own training step side by side, in the same
subprocess, alternating step by step: the original ``CausalMaskedDiffWithXvec`` built in torch with seeded random
weights (``sidebyside.build.build_flow``; ``flow.train()``, ``loss = flow(batch)["loss"]``, backward, clip 5, Adam:
``sidebyside.procedures.make_train_step``) on the same 4 x 500-frame batch, and fmjax's step on the same weights
converted through ``fmjax.convert.flow``; the row gains ``torch_step_s``, ``torch frames/s`` and ``torch / fmjax``
(the median of the per-round ratios) and the load. (The two losses draw their random numbers from different
generators; their cost does not depend on the draws.)

Each case runs in its own subprocess, so that ``peak_rss_mb`` (the process's maximum resident set size) belongs to
that case alone. ``frames/s`` counts the mel frames of a batch including padding (the work done); ``valid
frames/s`` only the frames inside the utterances (corpus batches are padded to their bucket). Prints a table and
writes ``benchmarks/results/bench_train_flow.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = pathlib.Path(os.environ.get("FMJAX_BENCH_CODE", HERE.parent)).resolve()  # the fmjax checkout under test
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

CASES = ("full", "tiny", "tiny_full", "tiny_chunked", "tiny_batch", "default")


def _overrides(case: str, model_cfg) -> list[str]:
    """``--set`` overrides of a tiny case, for this checkout's config schema (old: ``unified``; new: per row)."""
    old = hasattr(model_cfg, "unified")
    return {"tiny_full": ["model.chunk_prob=0.0"], "tiny_chunked": ["model.chunk_prob=1.0"],
            "tiny_batch": ["model.unified=batch"] if old else ["model.chunk_per_row=false"]}.get(case, [])
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


def measure(case: str, steps: int, repeats: int, cosyvoice: str | None = None, matcha: str | None = None) -> dict:
    """One case in this process: build, compile, time ``repeats`` windows of ``steps`` steps (``full`` with
    ``cosyvoice``: interleaved with the original's step, :func:`_sidebyside`)."""
    if case == "full" and cosyvoice:
        return _sidebyside(cosyvoice, matcha, rounds=max(2, repeats))
    import jax
    import numpy as np
    from common import time_compile, time_train_steps

    from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
    from fmjax.token2mel import COSYVOICE2_LOSS, flow_loss
    from train.config import apply_overrides
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
        base = token2mel.get_config("tiny" if case.startswith("tiny") else case)
        cfg = apply_overrides(base, _overrides(case, base.model))
        if hasattr(token2mel, "build"):  # an older checkout: configs held their experiment
            exp = token2mel.build(cfg)
        else:
            from train.experiments import build

            exp = build(cfg)
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


def _sidebyside(cosyvoice: str, matcha: str | None, rounds: int) -> dict:
    """The full-size step of CosyVoice2 (torch) and of fmjax on the same weights and batch, alternating."""
    import jax
    import numpy as np
    from common import time_compile
    from sidebyside import build, procedures as proc, wiring
    from sidebyside.originals import load_originals
    from timing import interleaved

    from fmjax.models.flow import CosyVoice2Flow
    from fmjax.token2mel import COSYVOICE2_LOSS, flow_loss
    from train.configs import token2mel
    from train.optim import make_optimizer, make_schedule
    from train.sharding import make_mesh, shard_batch, state_shardings
    from train.state import abstract_state, state_from_params
    from train.step import jit_train_step, make_train_step

    orig = load_originals(cosyvoice, matcha)
    flow, sd = build.build_flow(orig, size="full")
    cfg_flow, params = wiring.fmjax_flow(sd)
    del sd
    model = CosyVoice2Flow(cfg_flow)
    torch_batch = proc.train_batch(FULL_BATCH, FULL_FRAMES)
    torch_step = proc.make_train_step(flow)
    batch = {"tokens": torch_batch["speech_token"], "token_len": torch_batch["speech_token_len"],
             "mel": torch_batch["speech_feat"], "mel_mask": np.ones((FULL_BATCH, FULL_FRAMES), np.float32),
             "spk": torch_batch["embedding"], "row_mask": np.ones((FULL_BATCH,), np.float32)}
    cfg = token2mel.get_config("tiny")  # its optimizer settings
    mesh = make_mesh(1)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.train.steps), make_schedule(cfg.optim, cfg.train.steps)
    key = jax.random.key(0)
    shardings = state_shardings(abstract_state(lambda k: params, optimizer, key), mesh)
    state = state_from_params(params, optimizer, shardings)
    loss_fn = lambda p, b, k: flow_loss(model, p, b, k, loss=COSYVOICE2_LOSS)  # noqa: E731
    step = jit_train_step(make_train_step(loss_fn, optimizer, schedule, ema_decay=cfg.optim.ema_decay), shardings,
                          mesh)
    batch = shard_batch(batch, mesh)
    compile_s = time_compile(step, state, batch, key)
    holder = {"state": state}

    def run_fmjax():
        holder["state"], metrics = step(holder["state"], batch, key)
        return metrics["loss"]

    res = interleaved({"torch": lambda: torch_step(torch_batch), "fmjax": run_fmjax}, rounds=rounds, warmup=1)
    frames = FULL_BATCH * FULL_FRAMES
    t, f = res["torch"]["median_s"], res["fmjax"]["median_s"]
    return {"case": "full", "params": int(sum(x.size for x in jax.tree.leaves(params))),
            "batch": f"{FULL_BATCH} x {FULL_FRAMES}", "step_s": f, "frames/s": frames / f, "valid frames/s": frames / f,
            "torch_step_s": t, "torch frames/s": frames / t, "torch / fmjax": res["ratio_median"],
            "rounds": rounds, "compile_s": compile_s, "load_start": res["load_start"], "load_end": res["load_end"],
            "torch_loss": float(res["outputs"]["torch"]), "fmjax_loss": float(res["outputs"]["fmjax"]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "originals": orig.facts()}


def _run(case: str, quick: bool, code: pathlib.Path, side: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--one", case] + (["--quick"] if quick else []) + list(side)
    env = dict(os.environ, FMJAX_BENCH_CODE=str(code), PYTHONPATH=str(code))
    proc = subprocess.run(cmd, cwd=code, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"case {case} ({code}) failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_1m"] = os.getloadavg()[0]
    return row


def main():
    ap = argparse.ArgumentParser(description="Train-step throughput of CosyVoice2's flow (see the module docstring).")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="cases to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="2 repeats of 2 steps")
    ap.add_argument("--baseline", help="another fmjax checkout to time alongside (its commit's code, same cases)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds with --baseline (default 1)")
    ap.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case, print its JSON row
    from sidebyside import wiring

    wiring.add_options(ap)
    args = ap.parse_args()
    steps, repeats = (2, 2) if args.quick else (5, 3)
    if args.one:
        print(json.dumps(measure(args.one, steps if args.one != "full" else 2, repeats, args.cosyvoice, args.matcha)))
        return
    if args.cosyvoice:
        wiring.originals_or_exit(ap, args)  # a bad path is a usage error here, not a failed subprocess
    side = ["--cosyvoice", str(pathlib.Path(args.cosyvoice).resolve())] if args.cosyvoice else []
    if side and args.matcha:
        side += ["--matcha", str(pathlib.Path(args.matcha).resolve())]
    from common import print_table, write_json

    import statistics

    rows = []
    for case in args.cases:
        new, old = [], []
        for _ in range(max(1, args.rounds)):
            new.append(_run(case, args.quick, ROOT, side if case == "full" else ()))
            if args.baseline:
                old.append(_run(case, args.quick, pathlib.Path(args.baseline).resolve()))
        row = dict(new[-1], step_s=statistics.median(r["step_s"] for r in new))
        row["frames/s"] = new[-1]["frames/s"] * new[-1]["step_s"] / row["step_s"]
        if old:
            row["baseline_step_s"] = statistics.median(r["step_s"] for r in old)
            row["speed-up"] = row["baseline_step_s"] / row["step_s"]
        rows.append(row)
    by_case = {r["case"]: r for r in rows}
    if {"tiny", "tiny_full", "tiny_chunked"} <= set(by_case):
        single = min(by_case["tiny_full"]["step_s"], by_case["tiny_chunked"]["step_s"])
        by_case["tiny"]["unified / faster single mode"] = by_case["tiny"]["step_s"] / single
    cols = ["case", "params", "batch", "step_s", "baseline_step_s", "speed-up", "unified / faster single mode",
            "frames/s", "valid frames/s", "torch_step_s", "torch frames/s", "torch / fmjax", "compile_s", "peak_rss_mb",
            "load_start", "load_end", "load_1m"]
    print_table(rows, [c for c in cols if any(c in r for r in rows)],
                title="CosyVoice2 flow train step: unified CFM loss fwd + bwd + clip + AdamW + EMA, fp32, "
                      "1 CPU device (median over windows and rounds)")
    write_json("bench_train_flow", {"rows": rows, "full_batch": [FULL_BATCH, FULL_FRAMES],
                                    "baseline": args.baseline})


if __name__ == "__main__":
    main()
