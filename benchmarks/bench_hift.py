"""Full-size HiFT vocoder (CosyVoice2, 20.8 M params, random weights) on the CPU.

    python benchmarks/bench_hift.py [--frames 500] [--repeats 5] [--chunk 50]

Rows: (a) offline ``hift_inference`` on ``frames`` mel frames (500 = 10 s of audio at 24 kHz), split into
the source (f0 predictor, SineGen2, noise) and the filter (``hift_decode``); (b) one streaming step of
``chunk`` new frames (window ``chunk + 8``). Each row gives the median and min over repeats after a warm-up,
the compile time, the real-time factor (time / audio duration), the convolution FLOPs (2·k·in·out per output
sample) and the achieved GFLOP/s next to this machine's matmul peak measured in the same run. The load average
is recorded before and after: other processes share the CPU. The PyTorch-eager reference (CosyVoice's own
``HiFTGenerator.inference``, 10 s of mel) took 1.26 s on this machine kind (issue 5).
Writes ``benchmarks/results/bench_hift.json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import block, print_table, time_call, time_compile, write_json  # noqa: E402

from fmjax.models.hift import HiFTConfig, _decode, _inference, init_hift  # noqa: E402
from fmjax.vocoder_stream import _window, init_vocoder_cache  # noqa: E402

TORCH_EAGER_10S = 1.26  # seconds, CosyVoice HiFTGenerator.inference on 500 frames, CPU (issue 5)


def conv_flops(cfg: HiFTConfig, frames: int, *, f0_predictor: bool = True) -> float:
    """FLOPs (2 per multiply-add) of every convolution for ``frames`` mel frames (elementwise work excluded)."""
    conv = lambda t, cin, cout, k: 2.0 * t * cin * cout * k  # noqa: E731
    total = conv(frames, cfg.in_channels, cfg.base_channels, 7)  # conv_pre
    if f0_predictor:
        total += conv(frames, cfg.in_channels, cfg.f0_channels, 3)
        total += (cfg.f0_num_convs - 1) * conv(frames, cfg.f0_channels, cfg.f0_channels, 3)
    n_up = len(cfg.upsample_rates)
    down_rates = np.cumprod([1, *cfg.upsample_rates[::-1][:-1]])[::-1]
    t, ch = frames, cfg.base_channels
    for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        total += conv(t, ch, ch // 2, k)  # transposed conv: k taps per input frame
        t, ch = t * u + (i == n_up - 1), ch // 2  # the reflection pad adds a frame at the last stage
        total += conv(t, cfg.n_fft + 2, ch, 2 * down_rates[i] if down_rates[i] > 1 else 1)  # source_downs
        taps = 2 * cfg.source_resblock_kernel_sizes[i] * len(cfg.source_resblock_dilations[i])
        taps += sum(2 * kj * len(dj) for kj, dj in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations))
        total += conv(t, ch, ch, taps)  # source resblock + resblocks
    return total + conv(t, ch, cfg.n_fft + 2, 7)  # conv_post


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / time_call(lambda: f(a, a), repeats=repeats, warmup=2)["min_s"] / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    cfg = HiFTConfig()
    params = jax.tree_util.tree_map(jnp.asarray, init_hift(cfg, seed=0))
    mel = jax.random.normal(jax.random.key(1), (1, args.frames, cfg.in_channels))
    key = jax.random.key(2)
    peak = matmul_peak()
    rows = []

    def row(name, fn, compile_s, frames, flops):
        t = time_call(fn, repeats=args.repeats, warmup=1)
        audio_s = frames * cfg.upsample_factor / cfg.sampling_rate
        rows.append({
            "case": name, "frames": frames, "median_s": t["median_s"], "min_s": t["min_s"], "compile_s": compile_s,
            "rtf": t["median_s"] / audio_s, "conv_gflop": flops / 1e9, "gflop_per_s": flops / t["median_s"] / 1e9,
            "peak_frac": flops / t["median_s"] / 1e9 / peak,
        })

    inf_args = (cfg, params, mel, key, None, None, 0, None)
    c = time_compile(_inference, *inf_args)
    row("offline inference", lambda: _inference(*inf_args), c, args.frames, conv_flops(cfg, args.frames))
    _, source = block(_inference(*inf_args))
    c = time_compile(_decode, cfg, params, mel, source)
    row("  filter only (decode)", lambda: _decode(cfg, params, mel, source), c, args.frames,
        conv_flops(cfg, args.frames, f0_predictor=False))
    cache = init_vocoder_cache(cfg, 1, key)
    cache = cache._replace(started=jnp.ones((), bool), frames=jnp.asarray(100, jnp.int32))
    chunk = mel[:, : args.chunk]
    step_args = (cfg, params, cache, chunk, None)
    c = time_compile(_window, *step_args, first=False, final=False)
    row(f"stream step ({args.chunk} new frames)", lambda: _window(*step_args, first=False, final=False), c,
        args.chunk, conv_flops(cfg, args.chunk + 8))
    load_after = os.getloadavg()[0]

    cols = ["case", "frames", "median_s", "min_s", "compile_s", "rtf", "conv_gflop", "gflop_per_s", "peak_frac"]
    print_table(rows, cols, title=f"HiFT full size, CPU ({os.cpu_count()} cores), fp32; matmul peak {peak:.0f} GFLOP/s; "
                f"load avg {load_before:.1f} -> {load_after:.1f}; PyTorch eager 10 s: {TORCH_EAGER_10S} s")
    write_json("bench_hift", {"rows": rows, "matmul_peak_gflops": peak, "loadavg_before": load_before,
                              "loadavg_after": load_after, "torch_eager_10s_s": TORCH_EAGER_10S,
                              "target_10s_s": 0.5, "args": vars(args)})


if __name__ == "__main__":
    main()
