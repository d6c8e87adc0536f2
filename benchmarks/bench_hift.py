"""Full-size HiFT vocoder (CosyVoice2, 20.8 M params, random weights) on the CPU; with a CosyVoice checkout, side by
side with the original ``HiFTGenerator`` in one process.

    python benchmarks/bench_hift.py [--frames 500] [--repeats 5] [--chunk 50] [--cosyvoice PATH [--matcha PATH]]
        [--rounds 5]

fmjax rows: (a) offline ``hift_inference`` on ``frames`` mel frames (500 = 10 s of audio at 24 kHz), and the filter
alone (``hift_decode``, the source given); (b) one streaming window of ``chunk`` new frames (8 cached). Each row
gives the median and min over repeats after a warm-up, the compile time, the real-time factor (time / audio
duration), the convolution FLOPs (2·k·in·out per output sample) and GFLOP/s with its share of the fp32 peak
measured by ``benchmarks/roofline.py`` (the FMA kernel).

With ``--cosyvoice``: the original HiFT is built in torch with seeded random weights (``sidebyside.build.build_hift``),
the same weights go through ``fmjax.convert.hift``, and ``hift.inference`` (10 s) and ``hift.decode`` (the filter,
the same source on both sides) are timed interleaved with fmjax's (torch s, fmjax s, ratio torch / fmjax, load).
Agreement: the filter on the same source, and the whole inference given torch's recorded sine noise (1e-3).
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
from common import block, print_table, time_call, write_json  # noqa: E402
from roofline import peak_gflop_s  # noqa: E402
from sidebyside import wiring  # noqa: E402

from fmjax.models.hift import HiFTConfig, hift_decode, hift_inference, init_hift  # noqa: E402
from fmjax.vocoder_stream import init_vocoder_cache, vocoder_step  # noqa: E402


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


def sidebyside(orig, frames: int, rounds: int):
    """The original vs fmjax on the same weights: rows, agreement checks and the raw interleaved results."""
    from sidebyside import build, procedures as proc
    from timing import interleaved, json_ready, sidebyside_row

    hift, sd = build.build_hift(orig, size="full")
    cfg, params = wiring.fmjax_hift(sd)
    del sd
    params = jax.device_put(params)
    mel_t = np.random.default_rng(3).standard_normal((1, cfg.in_channels, frames)).astype(np.float32)
    mel = jnp.asarray(wiring.tl(mel_t))
    rec = proc.hift_recorded(hift, mel_t)  # torch's draws, for the agreement check
    checks = [wiring.agreement(f"HiFT inference {frames} frames (torch's sine noise)",
                               hift_inference(cfg, params, mel, sine_noise=jnp.asarray(rec["sine_noise"]))[0],
                               rec["speech"])]
    source = jnp.asarray(rec["source"])
    import torch

    torch_mel, torch_source = torch.from_numpy(mel_t), torch.from_numpy(rec["source"][:, None])

    def torch_decode():
        with torch.inference_mode():
            return hift.decode(x=torch_mel, s=torch_source)

    checks.append(wiring.agreement(f"HiFT filter {frames} frames (same source)", hift_decode(cfg, params, mel, source),
                                   torch_decode().numpy()))
    key = jax.random.key(2)
    rows, raw = [], {}
    cases = {"HiFT inference (source + filter)": (proc.hift_call(hift, mel_t),
                                                  lambda: hift_inference(cfg, params, mel, key=key)),
             "HiFT filter only (decode)": (torch_decode, lambda: hift_decode(cfg, params, mel, source))}
    for (name, (run_torch, run_fmjax)), check in zip(cases.items(), checks):
        res = interleaved({"torch": run_torch, "fmjax": run_fmjax}, rounds=rounds, warmup=1)
        rows.append(sidebyside_row(f"{name} {frames} frames", res, diff=check["max_abs_diff"],
                                   audio_s=frames * cfg.upsample_factor / cfg.sampling_rate))
        raw[name] = json_ready(res)
        print(rows[-1], flush=True)
    return rows, checks, raw


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds side by side")
    wiring.add_options(parser)
    args = parser.parse_args()
    for name in ("frames", "repeats", "chunk", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    if args.chunk < 8:
        parser.error(f"--chunk: a streaming window needs at least the 8 cached frames, got {args.chunk}")
    orig = wiring.originals_or_exit(parser, args)
    load_before = os.getloadavg()[0]
    peak, peak_source = peak_gflop_s()
    side_rows, checks, raw = ([], [], {}) if orig is None else sidebyside(orig, args.frames, args.rounds)
    cfg = HiFTConfig()
    params = jax.device_put(init_hift(cfg, seed=0))
    mel = jax.random.normal(jax.random.key(1), (1, args.frames, cfg.in_channels))
    key = jax.random.key(2)
    rows = []

    def row(name, fn, frames, flops):
        first = time_call(fn, repeats=1, warmup=0)["median_s"]  # compiles
        t = time_call(fn, repeats=args.repeats, warmup=0)
        audio_s = frames * cfg.upsample_factor / cfg.sampling_rate
        rate = flops / t["median_s"] / 1e9
        rows.append({"case": name, "frames": frames, "median_s": t["median_s"], "min_s": t["min_s"],
                     "first_call_s": first, "rtf": t["median_s"] / audio_s, "conv_gflop": flops / 1e9,
                     "gflop_per_s": rate, "of_peak": rate / peak if peak else None})
        print(rows[-1], flush=True)

    row("offline inference", lambda: hift_inference(cfg, params, mel, key=key), args.frames,
        conv_flops(cfg, args.frames))
    _, source = block(hift_inference(cfg, params, mel, key=key))
    row("  filter only (decode)", lambda: hift_decode(cfg, params, mel, source), args.frames,
        conv_flops(cfg, args.frames, f0_predictor=False))
    cache = init_vocoder_cache(cfg, 1, key)
    _, cache = vocoder_step(cfg, params, cache, mel[:, : args.chunk])  # the first window; later ones are steady
    chunk = mel[:, args.chunk : 2 * args.chunk]
    row(f"stream window (8 + {args.chunk} frames)", lambda: vocoder_step(cfg, params, cache, chunk), args.chunk,
        conv_flops(cfg, args.chunk + 8))
    load_after = os.getloadavg()[0]

    cols = ["case", "frames", "median_s", "min_s", "first_call_s", "rtf", "conv_gflop", "gflop_per_s", "of_peak"]
    peak_text = f"{peak:.0f} GFLOP/s" if peak else "unknown"
    print_table(rows, cols, title=f"HiFT full size (fmjax), CPU ({os.cpu_count()} cores), fp32; peak {peak_text} "
                f"({peak_source}); load avg {load_before:.1f} -> {load_after:.1f}")
    if side_rows:
        from timing import print_sidebyside

        print_sidebyside(side_rows, title="side by side, random weights (ratio = torch s / fmjax s, median over "
                                          "interleaved rounds)")
        print_table(checks, ["check", "max_abs_diff", "torch_std", "tol", "ok"], title="agreement")
    write_json("bench_hift", {"rows": rows, "peak_gflop_s": peak, "peak_source": peak_source,
                              "loadavg_before": load_before, "loadavg_after": load_after, "sidebyside": side_rows,
                              "agreement": checks, "interleaved": raw, "args": vars(args),
                              "originals": None if orig is None else orig.facts()})
    if checks and not all(c["ok"] for c in checks):
        sys.exit("fmjax and torch outputs disagree beyond the tolerance (see the agreement table)")


if __name__ == "__main__":
    main()
