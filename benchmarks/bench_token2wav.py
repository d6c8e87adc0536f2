"""Full-size token2wav on the CPU (CosyVoice2 flow 112.5 M + HiFT 20.8 M params, random weights, fp32).

    python benchmarks/bench_token2wav.py [--windows 100] [--tokens 500] [--repeats 3] [--skip-hift]

(a) HiFT on 10 s of mel (500 frames): offline ``hift_inference`` and one steady streaming window (50 new frames +
    8 cached), timed as in ``bench_hift.py`` (its FLOP count is reused). PyTorch eager: 1.26 s; target <= 0.5 s.
(b) End-to-end streaming :class:`fmjax.token2wav.Token2Wav` of a 20-s utterance (500 tokens, no prompt) arriving in
    25-token chunks, 10 Euler steps with CFG 0.7, CosyVoice2's fixed noise, HiFT in 50-frame windows: per-arrival
    latency (tokens in -> audio out; the flow's and the vocoder's shares) and real-time factor (latency / the audio
    that call emitted; the first arrival only buffers, as its chunk waits for 3 look-ahead tokens, and the last
    one flushes two chunks). Target: every chunk faster than real time. One row per K/V window (tokens; 500 = the
    whole stream, exactly CosyVoice2 HEAD's all-left-context masks).

A warm-up stream compiles every program first (the flow step, HiFT's first and steady windows); compilation is
excluded from the latencies and reported separately. The 1-minute load average is recorded with the numbers: other
jobs share the machine. Writes ``benchmarks/results/bench_token2wav.json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_hift import TORCH_EAGER_10S, conv_flops  # noqa: E402
from bench_token2mel import random_params  # noqa: E402
from common import block, print_table, time_call, write_json  # noqa: E402

from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig  # noqa: E402
from fmjax.models.hift import HiFTConfig, hift_inference, init_hift  # noqa: E402
from fmjax.token2mel_stream import Token2MelStream  # noqa: E402
from fmjax.token2wav import HiFTVocoder, Token2Wav  # noqa: E402
from fmjax.vocoder_stream import init_vocoder_cache, vocoder_step  # noqa: E402

CHUNK, STEPS = 25, 10


def load() -> float:
    return os.getloadavg()[0]


def bench_hift(cfg, params, repeats):
    """Offline 500 frames and one steady 50-frame window (compiled first, then timed)."""
    mel = jax.random.normal(jax.random.key(1), (1, 500, cfg.in_channels))
    key = jax.random.key(2)
    rows = []
    t0 = time.perf_counter()
    block(hift_inference(cfg, params, mel, key=key))
    compile_s = time.perf_counter() - t0
    t = time_call(lambda: hift_inference(cfg, params, mel, key=key), repeats=repeats, warmup=0)
    rows.append({"case": "HiFT offline 10 s", "frames": 500, "median_s": t["median_s"], "min_s": t["min_s"],
                 "first_call_s": compile_s, "rtf": t["median_s"] / 10.0, "torch_s": TORCH_EAGER_10S, "target_s": 0.5,
                 "gflop_per_s": conv_flops(cfg, 500) / t["median_s"] / 1e9, "loadavg": load()})
    cache = init_vocoder_cache(cfg, 1, key)
    _, cache = vocoder_step(cfg, params, cache, mel[:, :50])  # the first window; later ones are steady
    t0 = time.perf_counter()
    block(vocoder_step(cfg, params, cache, mel[:, 50:100]))
    compile_s = time.perf_counter() - t0
    t = time_call(lambda: vocoder_step(cfg, params, cache, mel[:, 50:100]), repeats=repeats, warmup=0)
    rows.append({"case": "HiFT stream window 8+50", "frames": 50, "median_s": t["median_s"], "min_s": t["min_s"],
                 "first_call_s": compile_s, "rtf": t["median_s"] / 1.0,
                 "gflop_per_s": conv_flops(cfg, 58) / t["median_s"] / 1e9, "loadavg": load()})
    for r in rows:
        print(r, flush=True)
    return rows


class TimedHiFT(HiFTVocoder):
    """The HiFT vocoder, adding the time of each of its calls (until the audio is ready) to ``SPENT``."""

    def step(self, params, cache, mel):
        t0 = time.perf_counter()
        out = block(super().step(params, cache, mel))
        SPENT.append(time.perf_counter() - t0)
        return out

    def finalize(self, params, cache, mel):
        t0 = time.perf_counter()
        out = block(super().finalize(params, cache, mel))
        SPENT.append(time.perf_counter() - t0)
        return out


SPENT: list[float] = []


def run_stream(t2w, params, tokens, emb):
    """Tokens arrive CHUNK at a time (the last chunk through ``finalize``). Per call: latency (tokens in -> audio
    out), the vocoder's share of it, and the samples emitted."""
    n = tokens.shape[1]
    t0 = time.perf_counter()
    state = t2w.init(params, emb)
    block(state.flow.rows)
    init_s = time.perf_counter() - t0
    lat, vocoder_s, samples = [], [], []
    for start in range(0, n, CHUNK):
        piece = tokens[:, start : start + CHUNK]
        SPENT.clear()
        t0 = time.perf_counter()
        if start + CHUNK >= n:
            state, out = t2w.finalize(params, state, piece)
        else:
            state, out = t2w.step(params, state, piece)
        lat.append(time.perf_counter() - t0)  # outputs are host numpy: the work is done
        vocoder_s.append(sum(SPENT))
        samples.append(len(out.wav[0]))
    return lat, vocoder_s, samples, init_s


def bench_stream(model, flow_params, hift_cfg, hift_params, tokens, emb, window):
    t2w = Token2Wav(Token2MelStream(model, window_tokens=window, n_steps=STEPS), TimedHiFT(hift_cfg))
    params = t2w.prepare_params(flow_params, hift_params)
    t0 = time.perf_counter()
    run_stream(t2w, params, tokens[:, : 2 * CHUNK], emb)  # compiles the flow step and HiFT's windows
    compile_s = time.perf_counter() - t0
    lat, vocoder_s, samples, init_s = run_stream(t2w, params, tokens, emb)
    n = tokens.shape[1]
    assert sum(samples) == t2w.samples_per_token * n, (sum(samples), n)
    # Real-time factor of a call: its latency over the duration of the audio it emitted. A call that emits nothing
    # only buffered its tokens (the first chunk waits for its 3 look-ahead tokens, in the next arrival).
    rtf = [s / (k / t2w.sample_rate) if k else None for s, k in zip(lat, samples)]
    working = [i for i, r in enumerate(rtf) if r is not None]
    med = statistics.median(lat[i] for i in working)
    row = {"case": f"token2wav W={window} tok", "window_tokens": window, "first_audio_s": sum(lat[: working[0] + 1]),
           "median_chunk_s": med, "max_chunk_s": max(lat), "median_rtf": statistics.median(rtf[i] for i in working),
           "max_rtf": max(rtf[i] for i in working),
           "faster_than_real_time": f"{sum(rtf[i] < 1 for i in working)}/{len(working)}",
           "median_vocoder_s": statistics.median(vocoder_s[i] for i in working), "total_s": sum(lat),
           "audio_s": sum(samples) / t2w.sample_rate, "init_s": init_s, "compile_and_warmup_s": compile_s,
           "loadavg": load()}
    print(row, flush=True)
    return row, {"latency_s": lat, "vocoder_s": vocoder_s, "rtf": rtf, "samples": samples}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="100", help="comma-separated K/V windows in tokens (500: exact HEAD masks)")
    ap.add_argument("--tokens", type=int, default=500, help="utterance length in tokens (500 = 20 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hift", action="store_true", help="skip (a)")
    args = ap.parse_args()
    load_before = load()
    print(f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} CPUs, load {load_before:.2f}", flush=True)
    hift_cfg = HiFTConfig()
    hift_params = jax.tree_util.tree_map(jnp.asarray, init_hift(hift_cfg, seed=0))
    hift_rows = [] if args.skip_hift else bench_hift(hift_cfg, hift_params, args.repeats)
    config = Token2MelConfig()
    model = CosyVoice2Flow(config)
    flow_params = random_params(model)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, (1, args.tokens))
    emb = rng.standard_normal((1, config.spk_embed_dim)).astype(np.float32)
    streams, per_chunk = [], {}
    for window in (int(w) for w in args.windows.split(",")):
        row, chunks = bench_stream(model, flow_params, hift_cfg, hift_params, tokens, emb, window)
        streams.append(row)
        per_chunk[window] = chunks
    load_after = load()

    if hift_rows:
        print_table(hift_rows, ["case", "frames", "median_s", "min_s", "first_call_s", "rtf", "gflop_per_s",
                                "loadavg"], title=f"(a) HiFT full size (PyTorch eager 10 s: {TORCH_EAGER_10S} s, "
                                                  "target 0.5 s)")
    for window, chunks in per_chunk.items():
        rows = [{"arrival": i, "latency_s": s, "flow_s": s - v, "vocoder_s": v, "samples": n,
                 "rtf": "(buffered)" if r is None else r}
                for i, (s, v, r, n) in enumerate(zip(chunks["latency_s"], chunks["vocoder_s"], chunks["rtf"],
                                                     chunks["samples"]))]
        print_table(rows, ["arrival", "latency_s", "flow_s", "vocoder_s", "samples", "rtf"],
                    title=f"(b) per {CHUNK}-token arrival, window {window} tokens (rtf = latency / emitted audio)")
    print_table(streams, ["case", "first_audio_s", "median_chunk_s", "max_chunk_s", "median_rtf", "max_rtf",
                          "faster_than_real_time", "median_vocoder_s", "total_s", "audio_s", "init_s",
                          "compile_and_warmup_s", "loadavg"],
                title=f"(b) streaming token2wav, {args.tokens} tokens in {CHUNK}-token chunks; load avg "
                      f"{load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores")
    write_json("bench_token2wav", {
        "flow_model": "CosyVoice2 full size (Token2MelConfig()), random weights",
        "hift_model": "HiFTConfig(), random weights",
        "steps": STEPS, "cfg_weight": 0.7, "chunk_tokens": CHUNK, "tokens": args.tokens, "hift": hift_rows,
        "streaming": streams, "per_chunk": per_chunk, "loadavg_before": load_before, "loadavg_after": load_after,
    })


if __name__ == "__main__":
    main()
