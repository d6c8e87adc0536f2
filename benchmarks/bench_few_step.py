"""Full-size streaming token2wav at few steps: a CosyVoice2-size MeanFlow student at NFE 1 and 2 without CFG next to
the teacher's sampler (NFE 10, CFG 0.7), in one run.

    python benchmarks/bench_few_step.py [--tokens 500] [--window 100] [--rounds 1] [--cases student1,student2,teacher10]

The flow is CosyVoice2's full size (112.5 M params; the student adds its second time embedding, ``estimator
.mean_flow=True``) with random N(0, 0.02²) weights, HiFT full size (20.8 M) with random weights, fp32. A 20-s
utterance (500 tokens, no prompt) streams through :class:`fmjax.pipelines.token2wav.Token2Wav` in 25-token chunks
(28 tokens first: a chunk and its 3 look-ahead tokens, then 25 per call, the rest through ``finalize``) with a
K/V window of ``--window`` tokens. Every case is compiled and warmed up on a 75-token stream first (compilation is
reported, never timed into the latencies); with ``--rounds k`` the cases alternate ``k`` times and the medians over
rounds are reported.

Per case: first audio (tokens in -> first audio out), median and max per-chunk latency, the flow's and the vocoder's
median shares, the real-time factor (total latency / audio duration, and per chunk: latency / the audio it
emitted), how many chunks were faster than real time, and the state bytes (the flow's stream state plus HiFT's
streaming cache, per stream; constant over the stream). Ratios teacher / student are from the same run. The issue's
targets (2-step student): every chunk faster than real time, RTF <= 0.5, first audio <= 0.5 s.

Writes ``benchmarks/results/bench_few_step.json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_token2mel import random_params  # noqa: E402
from bench_token2wav import CHUNK, LOOKAHEAD, TimedHiFT, run_stream  # noqa: E402
from common import print_table, write_json  # noqa: E402

from fmjax.meanflow import student_config  # noqa: E402
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig  # noqa: E402
from fmjax.models.hift import HiFTConfig, init_hift  # noqa: E402
from fmjax.pipelines.stream import Token2MelStream  # noqa: E402
from fmjax.pipelines.token2wav import Token2Wav  # noqa: E402
from fmjax.samplers import SamplerConfig  # noqa: E402
from fmjax.streaming import cache_nbytes  # noqa: E402

CASES = {
    "student1": ("MeanFlow student, NFE 1, no CFG", True, SamplerConfig("linear", 1, "meanflow", 0.0)),
    "student2": ("MeanFlow student, NFE 2, no CFG", True, SamplerConfig("linear", 2, "meanflow", 0.0)),
    "teacher10": ("teacher, NFE 10, CFG 0.7", False, SamplerConfig("cosine", 10, "euler", 0.7)),
}


def load() -> float:
    return os.getloadavg()[0]


def summarise(name: str, t2w: Token2Wav, out: dict, state_bytes: int) -> dict:
    lat = out["latency_s"]
    rtf = [s / (k / t2w.sample_rate) if k else None for s, k in zip(lat, out["samples"])]
    working = [i for i, r in enumerate(rtf) if r is not None]
    audio_s = sum(out["samples"]) / t2w.sample_rate
    return {"case": name, "nfe": t2w.stream.sampler.nfe, "cfg": t2w.stream.sampler.cfg_weight,
            "first_audio_s": sum(lat[: working[0] + 1]), "median_chunk_s": statistics.median(lat[i] for i in working),
            "max_chunk_s": max(lat), "median_flow_s": statistics.median(out["flow_s"][i] for i in working),
            "median_vocoder_s": statistics.median(out["vocoder_s"][i] for i in working),
            "rtf": sum(lat) / audio_s, "max_chunk_rtf": max(rtf[i] for i in working),
            "faster_than_real_time": f"{sum(rtf[i] < 1 for i in working)}/{len(working)}", "total_s": sum(lat),
            "audio_s": audio_s, "state_bytes": state_bytes, "loadavg": load()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=500, help="utterance length in tokens (default 500 = 20 s)")
    ap.add_argument("--window", type=int, default=100, help="K/V window in tokens (default 100)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds over the cases (default 1)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {list(CASES)} (default: all)")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if any(c not in CASES for c in cases) or not cases:
        ap.error(f"--cases: expected comma-separated names of {list(CASES)}, got {args.cases!r}")
    if args.tokens < 2 * CHUNK + LOOKAHEAD or args.rounds < 1 or args.window < CHUNK:
        ap.error(f"--tokens >= {2 * CHUNK + LOOKAHEAD}, --rounds >= 1, --window >= {CHUNK}")
    load_before = load()
    print(f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} CPUs, load {load_before:.2f}", flush=True)
    teacher = CosyVoice2Flow(Token2MelConfig())
    student = CosyVoice2Flow(student_config(Token2MelConfig()))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, teacher.config.vocab_size, (1, args.tokens)).astype(np.int32)
    emb = rng.standard_normal((1, teacher.config.spk_embed_dim)).astype(np.float32)
    hift_cfg = HiFTConfig()
    hift_params = jax.device_put(init_hift(hift_cfg, seed=0))
    flow_params = {False: random_params(teacher), True: random_params(student)}
    runs, compile_s = {c: [] for c in cases}, {}
    built = {}
    for c in cases:  # compile + warm up every case first
        _, is_student, sampler = CASES[c]
        t2w = Token2Wav(Token2MelStream(student if is_student else teacher, window_tokens=args.window,
                                        sampler=sampler), TimedHiFT(hift_cfg))
        params = t2w.prepare_params(flow_params[is_student], hift_params)
        t0 = time.perf_counter()
        run_stream(t2w, params, tokens[:, : 3 * CHUNK], emb)
        compile_s[c] = time.perf_counter() - t0
        state = t2w.init(params, emb)
        nbytes = t2w.stream.state_nbytes(1) + cache_nbytes(state.vocoder) + state.mel.nbytes
        built[c] = (t2w, params, nbytes)
        print(f"{c}: compiled and warmed up in {compile_s[c]:.1f} s, state {nbytes / 2**20:.1f} MiB", flush=True)
    for _ in range(args.rounds):
        for c in cases:
            t2w, params, nbytes = built[c]
            out = run_stream(t2w, params, tokens, emb)
            assert sum(out["samples"]) == t2w.samples_per_token * args.tokens
            row = summarise(CASES[c][0], t2w, out, nbytes)
            runs[c].append((row, out))
            print({k: row[k] for k in ("case", "first_audio_s", "median_chunk_s", "rtf", "loadavg")}, flush=True)
    load_after = load()
    rows = []
    for c in cases:
        first = runs[c][0][0]
        row = dict(first)
        for key in ("first_audio_s", "median_chunk_s", "max_chunk_s", "median_flow_s", "median_vocoder_s", "rtf",
                    "max_chunk_rtf", "total_s"):
            row[key] = statistics.median(r[key] for r, _ in runs[c])
        row["compile_and_warmup_s"] = compile_s[c]
        rows.append(row)
    by = {c: r for c, r in zip(cases, rows)}
    ratios = {}
    if "teacher10" in by:
        for c in ("student1", "student2"):
            if c in by:
                ratios[f"teacher10/{c}"] = {k: by["teacher10"][k] / by[c][k] for k in
                                           ("first_audio_s", "median_chunk_s", "median_flow_s", "rtf")}
    print_table(rows, ["case", "nfe", "cfg", "first_audio_s", "median_chunk_s", "max_chunk_s", "median_flow_s",
                       "median_vocoder_s", "rtf", "max_chunk_rtf", "faster_than_real_time", "state_bytes",
                       "compile_and_warmup_s", "loadavg"],
                title=f"streaming token2wav, full size, {args.tokens} tokens in {CHUNK}-token chunks, window "
                      f"{args.window}; medians over {args.rounds} round(s); load avg {load_before:.1f} -> "
                      f"{load_after:.1f} on {os.cpu_count()} cores")
    if ratios:
        print_table([{"ratio": k, **v} for k, v in ratios.items()],
                    ["ratio", "first_audio_s", "median_chunk_s", "median_flow_s", "rtf"], title="ratios (same run)")
    if "student2" in by:
        s = by["student2"]
        met = {"every chunk faster than real time": s["max_chunk_rtf"] < 1, "RTF <= 0.5": s["rtf"] <= 0.5,
               "first audio <= 0.5 s": s["first_audio_s"] <= 0.5}
        print("targets (2-step student): " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))
    write_json("bench_few_step", {
        "flow_model": "CosyVoice2 full size (Token2MelConfig()); student: estimator.mean_flow=True",
        "hift_model": "HiFTConfig()", "tokens": args.tokens, "window_tokens": args.window, "chunk_tokens": CHUNK,
        "rounds": args.rounds, "cases": {c: str(CASES[c][2]) for c in cases}, "rows": rows, "ratios": ratios,
        "per_call": {c: [{k: v for k, v in out.items() if k != "mel"} for _, out in runs[c]] for c in cases},
        "loadavg_before": load_before, "loadavg_after": load_after})


if __name__ == "__main__":
    main()
