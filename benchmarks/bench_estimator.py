"""Full-size CosyVoice2 estimator (71.3 M params, random weights): offline forward and streaming chunk step; with a
CosyVoice checkout, side by side with the original ``CausalConditionalDecoder`` in one process.

    python benchmarks/bench_estimator.py [--quick] [--dtypes fp32,bf16] [--cosyvoice PATH [--matcha PATH]]
        [--rounds 5]

(a) offline forward, batch 2 (the CFG pair), full-context attention, T = 100, 200, 500, 1000 frames. With
    ``--cosyvoice`` the original estimator is built in torch with seeded random weights
    (``sidebyside.build.build_estimator``), the same weights go through ``fmjax.convert.causal_unet``, the outputs
    are compared (max |fmjax - torch|, must be <= 1e-3) and both are timed interleaved in ``--rounds`` rounds
    (``timing.interleaved``): torch s, fmjax s, the per-round ratio torch / fmjax and the load average.
(b) one streaming chunk step of fmjax (C = 50 frames; batch 1 = one stream, batch 2 = one stream with CFG) with a
    K/V window of W = 100, 500, 1000 frames, the cache donated (ring buffers updated in place): ``filled`` after
    the window is full, ``first`` on an empty cache (the step attends only over the filled part of the ring, so a
    stream's first chunks are cheaper; see ``fmjax.nn.attention``). The original has no streaming step (CosyVoice
    re-runs the flow over the prefix: see ``bench_token2wav.py``).

Each row gives the median time, the FLOPs (matmuls and convolutions: 2·weights·frames; attention:
4·frames·keys·width per layer, keys = the window attended), GFLOP/s and its share of this machine's fp32 peak
measured by ``benchmarks/roofline.py`` (the FMA kernel; not a matmul rate). Writes
``benchmarks/results/bench_estimator_<backend>.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import block, print_table, time_call, write_json  # noqa: E402
from roofline import peak_gflop_s  # noqa: E402
from sidebyside import wiring  # noqa: E402

from fmjax.cond import MelCond  # noqa: E402
from fmjax.models.causal_unet import CausalConditionalDecoder, CausalUNetConfig  # noqa: E402
from fmjax.nn.attention import window_buckets  # noqa: E402

DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def random_params(model: CausalConditionalDecoder, dtype):
    """N(0, 0.02²) weights of the right shapes (LayerNorm scales 1), without compiling ``init``."""
    cfg = model.config
    x = jax.ShapeDtypeStruct((1, 4, cfg.mel_dim), jnp.float32)
    cond = MelCond(jax.ShapeDtypeStruct((1, 4, cfg.mu_dim), jnp.float32), jax.ShapeDtypeStruct((1, cfg.spk_dim), jnp.float32),
                   jax.ShapeDtypeStruct((1, 4, cfg.cond_dim), jnp.float32), jax.ShapeDtypeStruct((1, 4), jnp.float32))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, cond, jax.ShapeDtypeStruct((1,), jnp.float32))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        base = 1.0 if getattr(path[-1], "key", "") == "scale" else 0.0
        return jnp.asarray(base + 0.02 * rng.standard_normal(leaf.shape, np.float32), dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def frame_weights(params) -> int:
    """Weights applied to every frame (all kernels except the per-example time MLP and time projections)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [getattr(k, "key", "") for k in path]
        if names[-1] == "kernel" and "time_mlp" not in names and "time_proj" not in names:
            total += leaf.size
    return total


def inputs(cfg: CausalUNetConfig, b: int, t: int, dtype):
    ks = jax.random.split(jax.random.key(1), 4)
    cond = MelCond(jax.random.normal(ks[1], (b, t, cfg.mu_dim), dtype), jax.random.normal(ks[2], (b, cfg.spk_dim), dtype),
                   jnp.zeros((b, t, cfg.cond_dim), dtype), jnp.ones((b, t), dtype))
    return jax.random.normal(ks[0], (b, t, cfg.mel_dim), dtype), cond, jnp.full((b,), 0.5, jnp.float32)


def flops(cfg: CausalUNetConfig, p_frame: int, frames: int, keys: int) -> float:
    """2·weights·frames + 4·frames·keys·width per attention layer (``frames`` query rows, batch included)."""
    layers, inner = (2 + cfg.num_mid_blocks) * cfg.n_blocks, cfg.num_heads * cfg.head_dim
    return 2.0 * p_frame * frames + layers * 4.0 * frames * keys * inner


def sidebyside_offline(orig, lengths, rounds):
    """(a) against the original: interleaved rows and the agreement checks."""
    from sidebyside import build, procedures as proc
    from timing import interleaved, json_ready, sidebyside_row

    est, sd = build.build_estimator(orig, size="full")
    cfg, params = wiring.fmjax_estimator(sd)
    del sd
    model = CausalConditionalDecoder(cfg)
    offline = jax.jit(lambda p, x, c, t: model.apply(p, x, c, t)[0])
    rows, checks, raw = [], [], {}
    for t_len in lengths:
        inp = proc.estimator_inputs(2, t_len)
        x, t = jnp.asarray(wiring.tl(inp["x"])), jnp.asarray(inp["t"])
        cond = MelCond(jnp.asarray(wiring.tl(inp["mu"])), jnp.asarray(inp["spks"]), jnp.asarray(wiring.tl(inp["cond"])),
                       jnp.asarray(inp["mask"][:, 0]))
        res = interleaved({"torch": proc.estimator_call(est, inp), "fmjax": lambda: offline(params, x, cond, t)},
                          rounds=rounds, warmup=1)
        checks.append(wiring.agreement(f"estimator b=2 T={t_len}", wiring.tl(res["outputs"]["fmjax"]),
                                       res["outputs"]["torch"].numpy()))
        rows.append(sidebyside_row(f"estimator offline b=2 T={t_len}", res, diff=checks[-1]["max_abs_diff"]))
        raw[t_len] = json_ready(res)
        print(rows[-1], flush=True)
    return rows, checks, raw


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    ap.add_argument("--dtypes", default=None, help="comma-separated: fp32,bf16 (default fp32 on CPU, both on GPU)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds side by side (default 5; quick 3)")
    wiring.add_options(ap)
    args = ap.parse_args()
    orig = wiring.originals_or_exit(ap, args)
    backend = jax.default_backend()
    dtypes = (args.dtypes or ("fp32" if backend == "cpu" else "fp32,bf16")).split(",")
    if any(d not in DTYPES for d in dtypes):
        ap.error(f"--dtypes: expected a comma-separated subset of {sorted(DTYPES)}, got {args.dtypes!r}")
    repeats = 3 if args.quick else 7
    rounds = args.rounds or (3 if args.quick else 5)
    lengths = (100, 500) if args.quick else (100, 200, 500, 1000)
    windows = (100, 1000) if args.quick else (100, 500, 1000)
    peak, peak_source = peak_gflop_s()
    print(f"peak fp32 {peak} GFLOP/s ({peak_source})", flush=True)
    cfg = CausalUNetConfig()
    model = CausalConditionalDecoder(cfg)
    chunk = cfg.chunk_size
    side_rows, checks, raw = ([], [], {}) if orig is None else sidebyside_offline(orig, lengths, rounds)
    rows = []
    for name in dtypes:
        dtype = DTYPES[name]
        params = random_params(model, dtype)
        p_frame = frame_weights(params)

        def record(mode, size, batch, seconds, n_flops, compile_s, keys):
            rate = n_flops / seconds / 1e9
            rows.append({"mode": mode, "T_or_W": size, "batch": batch, "dtype": name, "keys": keys,
                         "median_ms": 1e3 * seconds, "gflop": n_flops / 1e9, "gflop_s": rate,
                         "of_peak": rate / peak if peak else None, "compile_s": compile_s})
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)

        offline = jax.jit(lambda p, x, c, t: model.apply(p, x, c, t)[0])
        for t_len in lengths:
            x, cond, t = inputs(cfg, 2, t_len, dtype)
            t0 = time.perf_counter()
            block(offline(params, x, cond, t))
            compile_s = time.perf_counter() - t0
            seconds = time_call(lambda: offline(params, x, cond, t), repeats=repeats)["median_s"]
            record("offline", t_len, 2, seconds, flops(cfg, p_frame, 2 * t_len, t_len), compile_s, t_len)

        step = jax.jit(lambda p, x, c, t, cache: model.apply(p, x, c, t, cache), donate_argnums=4)
        for bs, window in [(bs, w) for bs in (1, 2) for w in windows]:
            x, cond, t = inputs(cfg, bs, chunk, dtype)
            state = {"cache": model.init_cache(bs, window, dtype)}

            def run():
                v, state["cache"] = step(params, x, cond, t, state["cache"])
                return v

            def fresh():  # the first chunk of a stream: an empty ring (a new cache, made outside the timing)
                state["cache"] = block(model.init_cache(bs, window, dtype))

            t0 = time.perf_counter()
            block(run())
            compile_s = time.perf_counter() - t0
            firsts = []
            for _ in range(repeats):
                fresh()
                t0 = time.perf_counter()
                block(run())
                firsts.append(time.perf_counter() - t0)
            first_keys = window_buckets(window, chunk)[0]
            record("stream C=50 first", window, bs, float(np.median(firsts)),
                   flops(cfg, p_frame, bs * chunk, first_keys), compile_s, first_keys)
            for _ in range(window // chunk):  # fill the window before timing
                run()
            seconds = time_call(run, repeats=repeats)["median_s"]
            record("stream C=50 filled", window, bs, seconds, flops(cfg, p_frame, bs * chunk, window), compile_s,
                   window)
            del state

    cols = ["mode", "T_or_W", "batch", "dtype", "keys", "median_ms", "gflop", "gflop_s", "of_peak", "compile_s"]
    peak_text = f"{peak:.0f} GFLOP/s" if peak else "unknown"
    print_table(rows, cols, title=f"CosyVoice2 estimator (fmjax), {backend}; fp32 peak {peak_text} ({peak_source})")
    if side_rows:
        from timing import print_sidebyside

        print_sidebyside(side_rows, title="(a) side by side, batch 2, fp32, random weights (ratio = torch s / fmjax s, "
                                          "median over interleaved rounds)")
        print_table(checks, ["check", "max_abs_diff", "torch_std", "tol", "ok"], title="agreement")
    write_json(f"bench_estimator_{backend}", {
        "config": cfg.__dict__, "peak_gflop_s": peak, "peak_source": peak_source, "rows": rows,
        "sidebyside": side_rows, "agreement": checks, "interleaved": raw,
        "originals": None if orig is None else orig.facts(),
        "cache_bytes_batch2": {w: model.cache_nbytes(2, w) for w in windows}})
    if checks and not all(c["ok"] for c in checks):
        sys.exit("fmjax and torch outputs disagree beyond the tolerance (see the agreement table)")


if __name__ == "__main__":
    main()
