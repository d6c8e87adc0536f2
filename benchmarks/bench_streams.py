"""Batched streams: one :class:`fmjax.pipelines.stream.Token2MelStream` step serving 8 streams against the bare
model on a real batch of 8 at the same shapes, and against another fmjax checkout's 8-row step.

    python benchmarks/bench_streams.py [--chunks 5 25] [--rows 8] [--baseline /path/to/older/fmjax] [--rounds 2]
        [--quick]

Model: the ``token2mel`` ``default`` preset's flow (256-wide encoder and U-Net, random weights, fp32) with the
chunk ``C`` under test, K/V window 100 tokens, 10 Euler steps, CFG 0.7. Rows are fed in lockstep (``C`` tokens and
``L = 3`` look-ahead per step), so every step computes one chunk per row. Measured in one process per
(checkout, chunk), steady state (compilation and the first steps excluded), medians:

* ``stream_8``: one ``Token2MelStream.step`` of ``rows`` streams (the streams' prompts and stream positions differ:
  each row got a different prompt length at ``init``);
* ``stream_1``: the same with one stream;
* ``bare_8``: the model alone on the same shapes: the encoder's chunk step at batch ``rows`` and the whole ODE of
  one chunk (:func:`fmjax.streaming.sample_chunk`, CFG rows included), jitted together, nothing else.

Issue 11's targets: ``stream_8 <= 1.1 x bare_8``, and ``stream_8`` no slower than the baseline's 8-row step (both
ratios taken in one run; with ``--baseline`` the checkouts alternate in ``--rounds`` rounds). Prints a table,
writes ``benchmarks/results/bench_streams.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = pathlib.Path(os.environ.get("FMJAX_BENCH_CODE", HERE.parent)).resolve()
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

WINDOW, STEPS, CFG, LOOKAHEAD = 100, 10, 0.7, 3


def _flow(chunk: int):
    from fmjax.models.causal_unet import CausalUNetConfig
    from fmjax.models.encoder import EncoderConfig
    from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig

    enc = EncoderConfig(input_size=256, output_size=256, heads=4, linear_units=1024, num_blocks=3, num_up_blocks=2,
                        lookahead_channels=256, static_chunk_size=chunk)
    est = CausalUNetConfig(channels=256, n_blocks=2, num_mid_blocks=4, num_heads=4, head_dim=64, chunk_size=2 * chunk)
    return CosyVoice2Flow(Token2MelConfig(vocab_size=256, encoder=enc, estimator=est))


def _params(model):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fmjax.models.flow import flow_param_shapes

    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "embedding" in name:
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32))
        return jnp.asarray((1.0 if name.endswith("['scale']") else 0.0) + 0.02 * rng.standard_normal(leaf.shape,
                                                                                                    np.float32))

    return jax.tree_util.tree_map_with_path(draw, flow_param_shapes(model))


def _step_velocity(model, params):
    """The streaming velocity closure (this checkout's shared one when it has it)."""
    try:
        from fmjax.pipelines.common import flow_step_velocity
    except ImportError:  # an older checkout
        return lambda t, x, cond, cache: model.apply(params, x, cond, t, cache, method="estimate")
    return flow_step_velocity(model, params)


def _timed(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(chunk: int, rows: int, quick: bool) -> dict:
    """One (checkout, chunk) case in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fmjax.samplers import classifier_free_guidance_cached
    from fmjax.streaming import init_sampler_caches, sample_chunk
    from fmjax.timesteps import cosine_grid
    from fmjax.token2mel_stream import Token2MelStream

    model = _flow(chunk)
    stream = Token2MelStream(model, window_tokens=WINDOW, n_steps=STEPS, cfg_weight=CFG)
    params = stream.prepare_params(_params(model))
    cfg = model.config
    rng = np.random.default_rng(1)
    reps = 3 if quick else 7
    steps_needed = 2 + reps + 1  # warm-up steps, timed steps, margin
    total = chunk * (steps_needed + 1) + LOOKAHEAD
    out = {"chunk": chunk, "rows": rows}

    def run_stream(b):
        prompts = [(3 * i) % (2 * chunk) for i in range(b)]  # different prompt lengths: different stream positions
        p = max(prompts) if max(prompts) else 1
        emb = rng.standard_normal((b, cfg.spk_embed_dim)).astype(np.float32)
        ptok = rng.integers(0, 256, (b, p))
        pmel = rng.standard_normal((b, 2 * p, 80)).astype(np.float32)
        state = stream.init(params, emb, ptok, pmel, prompt_lengths=np.array(prompts) if max(prompts) else
                            np.zeros(b, np.int64))
        tokens = rng.integers(0, 256, (b, total))
        holder = {"state": state, "pos": 0}

        def step():
            s = holder["pos"]
            holder["state"], o = stream.step(params, holder["state"], tokens[:, s:s + chunk],
                                             tokens[:, s + chunk:s + chunk + LOOKAHEAD])
            jax.block_until_ready(o.mel)
            holder["pos"] += chunk

        step()
        step()  # compile + first (prompt-aligned) steps
        return _timed(step, reps)

    out["stream_8"] = run_stream(rows)
    out["stream_1"] = run_stream(1)

    # the bare model: encoder chunk step + the chunk's whole ODE, batch `rows`, same shapes as the stream's
    b, c, r = rows, chunk, cfg.token_mel_ratio
    enc_cache = model.init_encoder_cache(b, WINDOW)
    est_cache = init_sampler_caches(model.init_estimator_cache(2 * b, r * WINDOW), STEPS, "euler")
    grid = jnp.asarray(cosine_grid(STEPS), jnp.float32)

    import functools

    @functools.partial(jax.jit, donate_argnums=(1, 2))  # params as an argument and caches donated, as the stream
    def bare(params, enc_cache, est_cache, tokens, ctx, spks, x0):
        from fmjax.cond import MelCond

        guided = classifier_free_guidance_cached(_step_velocity(model, params), CFG)
        mu, enc_cache = model.apply(params, tokens, jnp.full((b,), c, jnp.int32), context=ctx,
                                    context_lengths=jnp.full((b,), LOOKAHEAD, jnp.int32), cache=enc_cache,
                                    method="encode")
        cond = MelCond(mu, spks, jnp.zeros_like(mu), jnp.ones(mu.shape[:2], mu.dtype))
        x1, est_cache = sample_chunk(guided, x0, cond, grid, est_cache, "euler")
        return x1, enc_cache, est_cache

    tok = jnp.asarray(rng.integers(0, 256, (b, c)), jnp.int32)
    ctx = jnp.asarray(rng.integers(0, 256, (b, LOOKAHEAD)), jnp.int32)
    spks = jnp.asarray(rng.standard_normal((b, cfg.spk_dim)), jnp.float32)
    x0 = jnp.asarray(rng.standard_normal((b, r * c, 80)), jnp.float32)
    holder = {"enc": enc_cache, "est": est_cache}

    def bare_step():
        x1, holder["enc"], holder["est"] = bare(params, holder["enc"], holder["est"], tok, ctx, spks, x0)
        jax.block_until_ready(x1)

    bare_step()
    out["bare_8"] = _timed(bare_step, reps)
    out["load_1m"] = os.getloadavg()[0]
    return out


def _run(chunk, rows, quick, code: pathlib.Path) -> dict:
    cmd = [sys.executable, __file__, "--one", str(chunk), "--rows", str(rows)] + (["--quick"] if quick else [])
    env = dict(os.environ, FMJAX_BENCH_CODE=str(code), PYTHONPATH=str(code))
    proc = subprocess.run(cmd, cwd=code, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"chunk {chunk} ({code}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description="Batched streams vs the bare model (see the module docstring).")
    ap.add_argument("--chunks", nargs="+", type=int, default=[5, 25], help="chunk sizes C in tokens (default 5 25)")
    ap.add_argument("--rows", type=int, default=8, help="streams per state (default 8)")
    ap.add_argument("--baseline", help="another fmjax checkout to time alongside")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds (default 1)")
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.rows, args.quick)))
        return
    from common import print_table, write_json

    rows = []
    for chunk in args.chunks:
        new, old = [], []
        for _ in range(max(1, args.rounds)):
            new.append(_run(chunk, args.rows, args.quick, ROOT))
            if args.baseline:
                old.append(_run(chunk, args.rows, args.quick, pathlib.Path(args.baseline).resolve()))
        med = {k: statistics.median(r[k] for r in new) for k in ("stream_8", "stream_1", "bare_8", "load_1m")}
        row = {"chunk": chunk, "rows": args.rows, **{f"{k}_s" if k != "load_1m" else k: v for k, v in med.items()}}
        row["stream_8 / bare_8"] = med["stream_8"] / med["bare_8"]
        row["stream_8 / stream_1"] = med["stream_8"] / med["stream_1"]
        if old:
            for k in ("stream_8", "stream_1", "bare_8"):
                row[f"baseline_{k}_s"] = statistics.median(r[k] for r in old)
            row["stream_8 / baseline stream_8"] = med["stream_8"] / row["baseline_stream_8_s"]
        rows.append(row)
    cols = list(rows[0])
    print_table(rows, cols, title=f"Token2MelStream with {args.rows} streams vs the bare model at batch {args.rows} "
                                  f"(default-preset flow, window {WINDOW} tokens, {STEPS} Euler steps, CFG {CFG})")
    write_json("bench_streams", {"rows": rows, "baseline": args.baseline})


if __name__ == "__main__":
    main()
