"""Full-size CosyVoice2 estimator (71.3 M params, random weights): offline forward and streaming chunk step.

    python benchmarks/bench_estimator.py [--quick] [--dtypes fp32,bf16]

(a) offline forward, batch 2 (the CFG pair), full-context attention, T = 100, 200, 500, 1000 frames;
(b) one streaming chunk step (C = 50 frames; batch 1 = one stream, batch 2 = one stream with CFG) with a K/V
    window of W = 100, 500, 1000 frames, the cache donated so that the ring buffers are updated in place, and the
    mid-stage weights split once with ``split_mid_params``.

Each row gives the median time, the estimated FLOPs (matmuls and convolutions: 2·weights·frames; attention:
4·frames·keys·width per layer), the achieved GFLOP/s and its ratio to this machine's matmul peak, measured in the
same run (a large square matmul in the same dtype). For (a) the PyTorch-eager times measured by the reference
harness on the CPU machine (0.198 / 0.350 / 1.18 / 3.71 s) are quoted for comparison. The same script runs
unchanged on a GPU (default: fp32 on CPU, fp32 and bf16 on a GPU). Writes
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

from fmjax.cond import MelCond  # noqa: E402
from fmjax.models.causal_unet import CausalConditionalDecoder, CausalUNetConfig, split_mid_params  # noqa: E402

TORCH_EAGER_S = {100: 0.198, 200: 0.350, 500: 1.18, 1000: 3.71}  # offline, batch 2, CPU (issue 3)
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def matmul_peak(dtype, n: int, repeats: int) -> float:
    """GFLOP/s of an ``n x n`` matmul in ``dtype`` (median)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    t = time_call(lambda: f(a, a), repeats=repeats, warmup=2)["median_s"]
    return 2 * n**3 / t / 1e9


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    ap.add_argument("--dtypes", default=None, help="comma-separated: fp32,bf16 (default fp32 on CPU, both on GPU)")
    args = ap.parse_args()
    backend = jax.default_backend()
    dtypes = (args.dtypes or ("fp32" if backend == "cpu" else "fp32,bf16")).split(",")
    repeats = 3 if args.quick else 7
    lengths = (100, 500) if args.quick else (100, 200, 500, 1000)
    windows = (100, 1000) if args.quick else (100, 500, 1000)
    cfg = CausalUNetConfig()
    model = CausalConditionalDecoder(cfg)
    attn_layers = (2 + cfg.num_mid_blocks) * cfg.n_blocks
    inner = cfg.num_heads * cfg.head_dim
    b, chunk = 2, cfg.chunk_size
    rows, peaks = [], {}
    for name in dtypes:
        dtype = DTYPES[name]
        peaks[name] = matmul_peak(dtype, 2048 if backend == "cpu" else 8192, repeats)
        params = random_params(model, dtype)
        p_frame = frame_weights(params)

        def record(mode, size, batch, seconds, flops, compile_s, torch_s=None):
            row = {"mode": mode, "T_or_W": size, "batch": batch, "dtype": name, "median_ms": 1e3 * seconds,
                   "gflop": flops / 1e9, "gflop_s": flops / seconds / 1e9, "of_peak": flops / seconds / 1e9 / peaks[name],
                   "compile_s": compile_s}
            if torch_s is not None:
                row.update(torch_ms=1e3 * torch_s, speedup=torch_s / seconds)
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

        offline = jax.jit(lambda p, x, c, t: model.apply(p, x, c, t)[0])
        for t_len in lengths:
            x, cond, t = inputs(cfg, b, t_len, dtype)
            t0 = time.perf_counter()
            block(offline(params, x, cond, t))
            compile_s = time.perf_counter() - t0
            seconds = time_call(lambda: offline(params, x, cond, t), repeats=repeats)["median_s"]
            flops = 2 * p_frame * b * t_len + attn_layers * 4 * b * t_len * t_len * inner
            record("offline", t_len, b, seconds, flops, compile_s, TORCH_EAGER_S.get(t_len) if name == "fp32" else None)

        step = jax.jit(lambda p, x, c, t, cache: model.apply(p, x, c, t, cache), donate_argnums=4)
        step_params = split_mid_params(params)  # per-stage mid weights: no slicing of the stack at every chunk
        for bs, window in [(bs, w) for bs in (1, 2) for w in windows]:
            x, cond, t = inputs(cfg, bs, chunk, dtype)
            state = {"cache": model.init_cache(bs, window, dtype)}

            def run():
                v, state["cache"] = step(step_params, x, cond, t, state["cache"])
                return v

            t0 = time.perf_counter()
            block(run())
            compile_s = time.perf_counter() - t0
            for _ in range(window // chunk):  # fill the window before timing
                run()
            seconds = time_call(run, repeats=repeats)["median_s"]
            flops = 2 * p_frame * bs * chunk + attn_layers * 4 * bs * chunk * window * inner
            record("stream step C=50", window, bs, seconds, flops, compile_s)
            del state

    cols = ["mode", "T_or_W", "batch", "dtype", "median_ms", "gflop", "gflop_s", "of_peak", "torch_ms", "speedup",
            "compile_s"]
    title = f"CosyVoice2 estimator, {backend}; matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    print_table(rows, cols, title=title)
    write_json(f"bench_estimator_{backend}", {"config": cfg.__dict__, "matmul_peak_gflop_s": peaks, "rows": rows,
                                              "cache_bytes_batch2": {w: model.cache_nbytes(2, w) for w in windows}})


if __name__ == "__main__":
    main()
