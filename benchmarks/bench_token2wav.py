"""Full-size streaming token2wav on the CPU (CosyVoice2 flow 112.5 M + HiFT 20.8 M params, random weights, fp32); with a
CosyVoice checkout, side by side with CosyVoice2's own streaming procedure in one process.

    python benchmarks/bench_token2wav.py [--windows 100] [--tokens 500] [--repeats 3] [--skip-hift]
        [--cosyvoice PATH [--matcha PATH]] [--sidebyside-window 500] [--rounds 1]

(a) HiFT (fmjax) on 10 s of mel (500 frames): offline ``hift_inference`` and one steady streaming window (50 new
    frames + 8 cached). (The original HiFT side by side: ``bench_hift.py --cosyvoice``.)
(b) fmjax's :class:`fmjax.pipelines.token2wav.Token2Wav` streaming a 20-s utterance (500 tokens, no prompt), 10 Euler
    steps with CFG 0.7, CosyVoice2's fixed noise, HiFT in 50-frame windows, the tokens arriving 28 first (a chunk
    and its 3 look-ahead tokens), then 25 per call, the rest through ``finalize``: per-call latency (tokens in ->
    audio out; the flow's and the vocoder's shares). A chunk is 25 tokens = 1 s of audio, so the median flow share
    is the flow time per second of audio. One row per K/V window (tokens; 500 = the whole stream, exactly CosyVoice2's
    all-left-context chunk masks).
(c) ``--cosyvoice``: the original flow and HiFT built in torch with seeded random weights, the same weights
    converted into fmjax (``fmjax.convert``), and CosyVoice2's streaming procedure (``CosyVoice2Model.token2wav``
    driven as ``tts(stream=True)`` does, every 25-token hop re-running the flow over all tokens so far; see
    ``sidebyside.procedures.stream_cosyvoice2``) against fmjax's stream at ``--sidebyside-window`` (default 500:
    the same masks), the same token schedule, alternating in ``--rounds`` rounds (torch first in even rounds).
    Reported: first chunk (28 tokens in -> first audio), total of the calls, flow time, and the ratios torch /
    fmjax. Agreement: the mel of every non-final call (the last call of the original uses full attention, ours the
    chunk masks) must match to 1e-3 when the window holds the whole stream. The audio is not compared: the two
    HiFTs draw their sine noise from different generators (``bench_hift.py`` compares them on the same noise).

A warm-up stream compiles every fmjax program first (the flow step, HiFT's first, steady and last windows);
compilation is excluded from the latencies and reported separately. Writes ``benchmarks/results/bench_token2wav.json``.
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
from bench_hift import conv_flops  # noqa: E402
from bench_token2mel import SAMPLER, random_params  # noqa: E402
from common import block, print_table, time_call, write_json  # noqa: E402
from sidebyside import wiring  # noqa: E402

from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig  # noqa: E402
from fmjax.models.hift import HiFTConfig, hift_inference, init_hift  # noqa: E402
from fmjax.pipelines.stream import Token2MelStream  # noqa: E402
from fmjax.pipelines.token2wav import HiFTVocoder, Token2Wav  # noqa: E402
from fmjax.vocoder_stream import init_vocoder_cache, vocoder_step  # noqa: E402

CHUNK, LOOKAHEAD = 25, 3


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
                 "first_call_s": compile_s, "rtf": t["median_s"] / 10.0,
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


SPENT: list[float] = []


class TimedHiFT(HiFTVocoder):
    """The HiFT vocoder, adding the time of each of its calls (until the audio is ready) to ``SPENT``."""

    def window(self, params, cache, mel, active, *, first, final):
        t0 = time.perf_counter()
        out = block(super().window(params, cache, mel, active, first=first, final=final))
        SPENT.append(time.perf_counter() - t0)
        return out

    def flush(self, cache, active):
        t0 = time.perf_counter()
        out = block(super().flush(cache, active))
        SPENT.append(time.perf_counter() - t0)
        return out


def schedule(n: int) -> list[int]:
    """Token counts per call, as CosyVoice's driver consumes them (``sidebyside.procedures.stream_cosyvoice2``): a
    chunk and its look-ahead first, then a chunk per call while a chunk and its look-ahead remain after the computed
    tokens; the last entry (the rest) goes through ``finalize``. 500 tokens: 28, 25 x 18, 22."""
    sizes, offset = [], 0
    while n - offset >= CHUNK + LOOKAHEAD:
        sizes.append(CHUNK + LOOKAHEAD if offset == 0 else CHUNK)
        offset += CHUNK
    return sizes + [n - sum(sizes)]


def run_stream(t2w, params, tokens, emb):
    """Feeds ``tokens`` by :func:`schedule` (the last piece through ``finalize``). Per call: latency (tokens in -> audio
    out), the vocoder's share, the samples emitted; and the mel frames of every call."""
    t0 = time.perf_counter()
    state = t2w.init(params, emb)
    block(state.flow.rows)
    init_s = time.perf_counter() - t0
    lat, vocoder_s, samples, mels, start = [], [], [], [], 0
    sizes = schedule(tokens.shape[1])
    for k, size in enumerate(sizes):
        piece = tokens[:, start : start + size]
        start += size
        SPENT.clear()
        t0 = time.perf_counter()
        if k == len(sizes) - 1:
            state, out = t2w.finalize(params, state, piece)
        else:
            state, out = t2w.step(params, state, piece)
        lat.append(time.perf_counter() - t0)  # outputs are host numpy: the work is done
        vocoder_s.append(sum(SPENT))
        samples.append(len(out.wav[0]))
        mels.append(np.asarray(out.mel[0]))
    return {"latency_s": lat, "vocoder_s": vocoder_s, "flow_s": [a - v for a, v in zip(lat, vocoder_s)],
            "samples": samples, "mel": np.concatenate(mels, 0), "init_s": init_s, "total_s": sum(lat),
            "first_chunk_s": lat[0]}


def make_t2w(model, window, hift_cfg):
    return Token2Wav(Token2MelStream(model, window_tokens=window, sampler=SAMPLER), TimedHiFT(hift_cfg))


def bench_stream(model, flow_params, hift_cfg, hift_params, tokens, emb, window):
    t2w = make_t2w(model, window, hift_cfg)
    params = t2w.prepare_params(flow_params, hift_params)
    t0 = time.perf_counter()
    run_stream(t2w, params, tokens[:, : 3 * CHUNK], emb)  # compiles the flow step and HiFT's windows
    compile_s = time.perf_counter() - t0
    out = run_stream(t2w, params, tokens, emb)
    n = tokens.shape[1]
    assert sum(out["samples"]) == t2w.samples_per_token * n, (sum(out["samples"]), n)
    lat = out["latency_s"]
    rtf = [s / (k / t2w.sample_rate) if k else None for s, k in zip(lat, out["samples"])]
    working = [i for i, r in enumerate(rtf) if r is not None]
    row = {"case": f"token2wav W={window} tok", "window_tokens": window, "first_audio_s": sum(lat[: working[0] + 1]),
           "median_chunk_s": statistics.median(lat[i] for i in working), "max_chunk_s": max(lat),
           "median_flow_s": statistics.median(out["flow_s"][i] for i in working),
           "median_vocoder_s": statistics.median(out["vocoder_s"][i] for i in working),
           "median_rtf": statistics.median(rtf[i] for i in working), "max_rtf": max(rtf[i] for i in working),
           "faster_than_real_time": f"{sum(rtf[i] < 1 for i in working)}/{len(working)}", "total_s": sum(lat),
           "audio_s": sum(out["samples"]) / t2w.sample_rate, "init_s": out["init_s"],
           "compile_and_warmup_s": compile_s, "loadavg": load()}
    print(row, flush=True)
    out.pop("mel")
    return row, dict(out, rtf=rtf)


def sidebyside(orig, tokens, emb, window, rounds):
    """(c): CosyVoice2's streaming procedure vs fmjax's stream on the same weights and token schedule."""
    import torch

    from sidebyside import build, procedures as proc

    flow, flow_sd = build.build_flow(orig, size="full")
    hift, hift_sd = build.build_hift(orig, size="full")
    cfg, flow_params = wiring.fmjax_flow(flow_sd)
    hift_cfg, hift_params = wiring.fmjax_hift(hift_sd)
    del flow_sd, hift_sd
    t2w = make_t2w(CosyVoice2Flow(cfg), window, hift_cfg)
    params = t2w.prepare_params(flow_params, hift_params)
    warm = tokens[:, : 3 * CHUNK]
    t0 = time.perf_counter()
    run_stream(t2w, params, warm, emb)
    compile_s = time.perf_counter() - t0
    proc.stream_cosyvoice2(orig, flow, hift, warm, emb)  # torch's first-call allocations
    runs = {"torch": [], "fmjax": []}
    for r in range(rounds):
        for side in (("torch", "fmjax") if r % 2 == 0 else ("fmjax", "torch")):
            print(f"round {r}: {side} streaming {tokens.shape[1]} tokens (load {load():.2f})", flush=True)
            if side == "torch":
                with torch.inference_mode():
                    out = proc.stream_cosyvoice2(orig, flow, hift, tokens, emb)
                out["flow_s"] = [c["flow_s"] for c in out["chunks"]]
                out["latency_s"] = [c["total_s"] for c in out["chunks"]]
                out["mel"] = wiring.tl(out["mel"][0])  # [T, 80]
            else:
                out = run_stream(t2w, params, tokens, emb)
            out["load"] = load()
            runs[side].append(out)
    frames = 2 * CHUNK * (len(schedule(tokens.shape[1])) - 1)  # the non-final calls' frames
    exact = window >= tokens.shape[1]
    check = wiring.agreement(f"stream mel, frames 0-{frames - 1} (non-final calls)", runs["fmjax"][-1]["mel"][:frames],
                             runs["torch"][-1]["mel"][:frames])
    if not exact:
        check.update(ok=True, note=f"window {window} < {tokens.shape[1]} tokens: a sliding window, not CosyVoice's "
                                   "masks (not required to agree)")
    med = lambda side, key: statistics.median(o[key] for o in runs[side])  # noqa: E731
    ratio = lambda key: statistics.median(t[key] / f[key] for t, f in zip(runs["torch"], runs["fmjax"]))  # noqa: E731
    for side in runs:
        for o in runs[side]:
            o["flow_total_s"] = sum(o["flow_s"])
    row = {"case": f"stream {tokens.shape[1]} tok, fmjax W={window}", "rounds": rounds,
           "torch_first_chunk_s": med("torch", "first_chunk_s"), "fmjax_first_chunk_s": med("fmjax", "first_chunk_s"),
           "first_chunk_ratio": ratio("first_chunk_s"), "torch_total_s": med("torch", "total_s"),
           "fmjax_total_s": med("fmjax", "total_s"), "total_ratio": ratio("total_s"),
           "torch_flow_total_s": med("torch", "flow_total_s"), "fmjax_flow_total_s": med("fmjax", "flow_total_s"),
           "flow_ratio": ratio("flow_total_s"),
           "fmjax_median_flow_s_per_audio_s": statistics.median(statistics.median(o["flow_s"][1:-1])
                                                                for o in runs["fmjax"]),
           "diff": check["max_abs_diff"], "fmjax_compile_s": compile_s,
           "load_start": runs["torch"][0]["load"], "load_end": load()}
    print(row, flush=True)
    per_call = {side: [{k: v for k, v in o.items() if k not in ("mel", "speech", "chunks")} for o in runs[side]]
                for side in runs}
    return row, check, per_call


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="100", help="comma-separated K/V windows in tokens (500: exact HEAD masks)")
    ap.add_argument("--tokens", type=int, default=500, help="utterance length in tokens (500 = 20 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hift", action="store_true", help="skip (a)")
    ap.add_argument("--sidebyside-window", type=int, default=500, help="fmjax's window in (c), tokens (default 500)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds in (c) (default 1)")
    wiring.add_options(ap)
    args = ap.parse_args()
    try:
        windows = [int(w) for w in args.windows.split(",")] if args.windows else []
    except ValueError:
        ap.error(f"--windows: expected comma-separated integers, got {args.windows!r}")
    if args.tokens < 2 * CHUNK + LOOKAHEAD or args.repeats < 1 or args.rounds < 1:
        ap.error(f"--tokens >= {2 * CHUNK + LOOKAHEAD}, --repeats >= 1, --rounds >= 1")
    if any(w < CHUNK for w in windows + [args.sidebyside_window]):
        ap.error(f"--windows/--sidebyside-window: at least one chunk ({CHUNK} tokens)")
    orig = wiring.originals_or_exit(ap, args)
    load_before = load()
    print(f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} CPUs, load {load_before:.2f}", flush=True)
    config = Token2MelConfig()
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, (1, args.tokens)).astype(np.int32)
    emb = rng.standard_normal((1, config.spk_embed_dim)).astype(np.float32)
    side, check, side_calls = None, None, None
    if orig is not None:
        side, check, side_calls = sidebyside(orig, tokens, emb, args.sidebyside_window, args.rounds)
    hift_cfg = HiFTConfig()
    hift_params = jax.device_put(init_hift(hift_cfg, seed=0))
    hift_rows = [] if args.skip_hift else bench_hift(hift_cfg, hift_params, args.repeats)
    model = CosyVoice2Flow(config)
    flow_params = random_params(model) if windows else None
    streams, per_call = [], {}
    for window in windows:
        row, calls = bench_stream(model, flow_params, hift_cfg, hift_params, tokens, emb, window)
        streams.append(row)
        per_call[window] = calls
    load_after = load()

    if hift_rows:
        print_table(hift_rows, ["case", "frames", "median_s", "min_s", "first_call_s", "rtf", "gflop_per_s",
                                "loadavg"], title="(a) HiFT full size (fmjax)")
    for window, calls in per_call.items():
        rows = [{"call": i, "latency_s": s, "flow_s": f, "vocoder_s": v, "samples": n,
                 "rtf": "(buffered)" if r is None else r}
                for i, (s, f, v, r, n) in enumerate(zip(calls["latency_s"], calls["flow_s"], calls["vocoder_s"],
                                                        calls["rtf"], calls["samples"]))]
        print_table(rows, ["call", "latency_s", "flow_s", "vocoder_s", "samples", "rtf"],
                    title=f"(b) per call, window {window} tokens (rtf = latency / emitted audio)")
    if streams:
        print_table(streams, ["case", "first_audio_s", "median_chunk_s", "median_flow_s", "median_vocoder_s",
                              "max_chunk_s", "median_rtf", "max_rtf", "faster_than_real_time", "total_s", "audio_s",
                              "init_s", "compile_and_warmup_s", "loadavg"],
                    title=f"(b) streaming token2wav (fmjax), {args.tokens} tokens; load avg {load_before:.1f} -> "
                          f"{load_after:.1f} on {os.cpu_count()} cores")
    if side:
        t, f = side_calls["torch"][-1], side_calls["fmjax"][-1]
        rows = [{"call": i, "torch_latency_s": a, "torch_flow_s": b, "fmjax_latency_s": c, "fmjax_flow_s": d}
                for i, (a, b, c, d) in enumerate(zip(t["latency_s"], t["flow_s"], f["latency_s"], f["flow_s"]))]
        print_table(rows, list(rows[0]), title="(c) per call, last round")
        print_table([side], list(side), title="(c) side by side: CosyVoice2's streaming procedure / fmjax's stream "
                                              "(ratios = torch / fmjax, median over rounds)")
        print_table([check], [k for k in ("check", "max_abs_diff", "torch_std", "tol", "ok", "note") if k in check],
                    title="agreement")
    write_json("bench_token2wav", {
        "flow_model": "CosyVoice2 full size (Token2MelConfig())", "hift_model": "HiFTConfig()", "sampler": str(SAMPLER),
        "chunk_tokens": CHUNK, "tokens": args.tokens, "schedule": schedule(args.tokens), "hift": hift_rows,
        "streaming": streams, "per_call": per_call, "sidebyside": side, "agreement": check,
        "sidebyside_per_call": side_calls, "originals": None if orig is None else orig.facts(),
        "loadavg_before": load_before, "loadavg_after": load_after})
    if check and not check["ok"]:
        sys.exit("fmjax and torch mels disagree beyond the tolerance (see the agreement table)")


if __name__ == "__main__":
    main()
