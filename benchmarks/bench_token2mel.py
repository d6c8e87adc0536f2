"""Full-size CosyVoice2 token2mel (112.5 M params, random weights, fp32): offline and streaming, 10 Euler steps, CFG
0.7; with a CosyVoice checkout, offline side by side with the original ``flow.inference`` in one process.

    python benchmarks/bench_token2mel.py [--quick] [--windows 100,500] [--skip-offline] [--skip-parts]
        [--cosyvoice PATH [--matcha PATH]] [--rounds 3]

(a) offline: a 10-s utterance (250 tokens, no prompt), full-context attention. With ``--cosyvoice`` the original
    ``CausalMaskedDiffWithXvec`` is built in torch with seeded random weights (``sidebyside.build.build_flow``),
    the same weights go through ``fmjax.convert.flow``, and ``flow.inference(finalize=True)`` (encoder + 10 cosine
    Euler steps, CFG by batch doubling, CosyVoice's fixed noise) is timed interleaved with ``token2mel`` (the same
    noise): torch s, fmjax s, ratio torch / fmjax, load; the mels must agree to 1e-3.
(b) streaming (fmjax): a 20-s utterance (500 tokens) in 25-token chunks with 3 look-ahead tokens through
    :class:`fmjax.pipelines.stream.Token2MelStream` (one compiled step), for each K/V window (in tokens; 500 holds the
    whole stream, i.e. exactly CosyVoice2's all-left-context chunk masks). Per-chunk latency, first chunk, median,
    max, total; a chunk is 25 tokens = 1 s of audio, so the median chunk is the flow time per second of audio.
    (CosyVoice's streaming procedure side by side: ``bench_token2wav.py --cosyvoice``.)
(c) where a chunk's time goes: the encoder's chunk step and the estimator's whole ODE for one chunk
    (:func:`fmjax.streaming.sample_chunk`, 10 steps x CFG pair) timed alone with the same window.

Compilation is timed separately and excluded from the latencies (a warm-up stream compiles the step first).
Writes ``benchmarks/results/bench_token2mel.json``.
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
from common import block, print_table, time_call, write_json  # noqa: E402
from sidebyside import wiring  # noqa: E402

from fmjax.cond import MelCond  # noqa: E402
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, flow_param_shapes  # noqa: E402
from fmjax.noise import cosyvoice_noise  # noqa: E402
from fmjax.pipelines.common import flow_step_velocity  # noqa: E402
from fmjax.pipelines.stream import Token2MelStream  # noqa: E402
from fmjax.pipelines.token2mel import token2mel  # noqa: E402
from fmjax.samplers import SamplerConfig  # noqa: E402
from fmjax.streaming import init_sampler_caches, sample_chunk  # noqa: E402

CHUNK, LOOKAHEAD, STEPS, OFFLINE_TOKENS = 25, 3, 10, 250
SAMPLER = SamplerConfig("cosine", STEPS, "euler", 0.7)
HISTORICAL = {  # measured at other times under other loads (issues 3-5): for orientation only, never divided by
    "torch_flow_inference_250_tokens_s": 11.68, "torch_stream_20s": {"first": 1.28, "last": 28.0, "total": 272.0}}


def random_params(model: CosyVoice2Flow):
    """N(0, 0.02²) weights (LayerNorm scales 1, token table N(0, 1)) without compiling ``init``."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "embedding" in name:
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32))
        base = 1.0 if name.endswith("['scale']") else 0.0
        return jnp.asarray(base + 0.02 * rng.standard_normal(leaf.shape, np.float32))

    return jax.tree_util.tree_map_with_path(draw, flow_param_shapes(model))


def load() -> float:
    return os.getloadavg()[0]


def bench_offline(model, params, tokens, emb, repeats):
    t0 = time.perf_counter()
    block(token2mel(model, params, tokens, emb, sampler=SAMPLER).mel)
    first = time.perf_counter() - t0
    timing = time_call(lambda: token2mel(model, params, tokens, emb, sampler=SAMPLER).mel, repeats=repeats, warmup=0)
    row = {"case": f"offline {tokens.shape[1]} tok", "median_s": timing["median_s"], "min_s": timing["min_s"],
           "first_call_s": first, "loadavg": load()}
    print(row, flush=True)
    return row


def sidebyside_offline(orig, tokens, emb, rounds):
    """(a) against the original ``flow.inference`` on the same weights and noise."""
    from sidebyside import build, procedures as proc
    from timing import interleaved, json_ready, sidebyside_row

    flow, sd = build.build_flow(orig, size="full")
    cfg, params = wiring.fmjax_flow(sd)
    del sd
    model, params = CosyVoice2Flow(cfg), jax.device_put(params)
    res = interleaved({"torch": proc.flow_offline_call(flow, tokens, emb),
                       "fmjax": lambda: token2mel(model, params, tokens, emb, sampler=SAMPLER).mel},
                      rounds=rounds, warmup=1)
    check = wiring.agreement(f"flow offline {tokens.shape[1]} tokens (mel)", res["outputs"]["fmjax"],
                             wiring.tl(res["outputs"]["torch"].numpy()))
    row = sidebyside_row(f"flow offline {tokens.shape[1]} tok (10 s)", res, diff=check["max_abs_diff"])
    print(row, flush=True)
    return [row], [check], json_ready(res)


def run_stream(stream, params, tokens, emb):
    """Streams all tokens; returns per-step latencies (s), emitted frame counts, the state and the init time (the
    state is materialised before the first chunk is timed: init runs when the prompt is known)."""
    n = tokens.shape[1]
    t0 = time.perf_counter()
    state = stream.init(params, emb)
    block(state.rows)
    init_s = time.perf_counter() - t0
    lat, frames = [], []
    for start in range(0, n, CHUNK):
        final = n - start <= CHUNK
        ahead = None if final else tokens[:, start + CHUNK : start + CHUNK + LOOKAHEAD]
        t0 = time.perf_counter()
        state, out = stream.step(params, state, tokens[:, start : start + CHUNK], ahead, final=final)
        block(out)
        lat.append(time.perf_counter() - t0)
        frames.append(int(out.lengths[0]))
    return lat, frames, state, init_s


def bench_stream(model, params, tokens, emb, window):
    stream = Token2MelStream(model, window_tokens=window, sampler=SAMPLER)
    t0 = time.perf_counter()
    run_stream(stream, params, tokens[:, : 2 * CHUNK], emb)  # compiles the step (and warms it up)
    compile_s = time.perf_counter() - t0
    lat, frames, state, init_s = run_stream(stream, params, tokens, emb)
    assert sum(frames) == 2 * tokens.shape[1], frames
    med = statistics.median(lat)
    row = {"case": f"stream W={window} tok", "window_tokens": window, "window_frames": 2 * window,
           "first_chunk_s": lat[0], "median_chunk_s": med, "flow_s_per_audio_s": med, "max_chunk_s": max(lat),
           "max/median": max(lat) / med, "total_s": sum(lat), "chunks": len(lat), "init_s": init_s,
           "state_MB": stream.state_nbytes(1) / 2**20, "compile_and_warmup_s": compile_s, "loadavg": load()}
    print(row, flush=True)
    return row, lat, frames


def bench_parts(model, params, window, repeats):
    """The encoder chunk step and the estimator's 10-step CFG ODE for one chunk, alone (same window)."""
    cfg = model.config
    c, r, m = cfg.chunk_size, cfg.token_mel_ratio, cfg.mel_dim
    enc_step = jax.jit(lambda p, tok, n, ctx, cache: model.apply(
        p, tok, n, context=ctx, cache=cache, method="encode"), donate_argnums=4)
    state = {"enc": model.init_encoder_cache(1, window)}
    tok, n, ctx = jnp.ones((1, c), jnp.int32), jnp.array([c]), jnp.ones((1, LOOKAHEAD), jnp.int32)

    def run_enc():
        mu, state["enc"] = enc_step(params, tok, n, ctx, state["enc"])
        return mu

    block(run_enc())
    for _ in range(window // c):  # fill the window
        run_enc()
    enc_s = time_call(run_enc, repeats=repeats, warmup=0)["median_s"]
    del state["enc"]
    guided = SAMPLER.guided(flow_step_velocity(model, params), cached=True)
    grid = jnp.asarray(SAMPLER.time_grid())
    ode = jax.jit(lambda x0, cond, caches: sample_chunk(guided, x0, cond, grid, caches, SAMPLER.solver),
                  donate_argnums=2)
    state["est"] = init_sampler_caches(model.init_estimator_cache(2, r * window), STEPS, SAMPLER.solver)
    x0 = jnp.asarray(cosyvoice_noise(r * c, m))[None]
    cond = MelCond(jnp.ones((1, r * c, m)), jnp.ones((1, cfg.spk_dim)), jnp.zeros((1, r * c, m)), jnp.ones((1, r * c)))

    def run_ode():
        x1, state["est"] = ode(x0, cond, state["est"])
        return x1

    block(run_ode())
    for _ in range(window // c):
        run_ode()
    ode_s = time_call(run_ode, repeats=repeats, warmup=0)["median_s"]
    del state["est"]
    row = {"window_tokens": window, "encoder_chunk_s": enc_s, "estimator_ode_chunk_s": ode_s,
           "estimator_per_eval_s": ode_s / STEPS, "loadavg": load()}
    print(row, flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one timed repeat")
    ap.add_argument("--windows", default="100,500", help="comma-separated K/V windows in tokens")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-parts", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds side by side (default 3)")
    wiring.add_options(ap)
    args = ap.parse_args()
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        ap.error(f"--windows: expected comma-separated integers, got {args.windows!r}")
    if any(w < CHUNK for w in windows) or args.rounds < 1:
        ap.error(f"--windows: each at least one chunk ({CHUNK} tokens); --rounds >= 1")
    orig = wiring.originals_or_exit(ap, args)
    repeats = 1 if args.quick else 3
    config = Token2MelConfig()
    model = CosyVoice2Flow(config)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, (1, 500)).astype(np.int32)
    emb = rng.standard_normal((1, config.spk_embed_dim)).astype(np.float32)
    print(f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} CPUs, load {load():.2f}", flush=True)
    side, checks, raw = [], [], None
    if orig is not None and not args.skip_offline:
        side, checks, raw = sidebyside_offline(orig, tokens[:, :OFFLINE_TOKENS], emb, args.rounds)
    params = random_params(model)
    offline = [] if args.skip_offline else [bench_offline(model, params, tokens[:, :OFFLINE_TOKENS], emb, repeats)]
    streams, latencies, parts = [], {}, []
    for window in windows:
        row, lat, frames = bench_stream(model, params, tokens, emb, window)
        streams.append(row)
        latencies[window] = {"latency_s": lat, "frames": frames}
        if not args.skip_parts:
            parts.append(bench_parts(model, params, window, repeats))

    if offline:
        print_table(offline, ["case", "median_s", "min_s", "first_call_s", "loadavg"], title="(a) offline, 10-s "
                    "utterance (fmjax)")
    if side:
        from timing import print_sidebyside

        print_sidebyside(side, title="(a) side by side (ratio = torch s / fmjax s, median over interleaved rounds)")
        print_table(checks, ["check", "max_abs_diff", "torch_std", "tol", "ok"], title="agreement")
    for window in windows:
        lat = latencies[window]["latency_s"]
        rows = [{"chunk": i, "latency_s": s, "frames": f} for i, (s, f) in
                enumerate(zip(lat, latencies[window]["frames"]))]
        print_table(rows, ["chunk", "latency_s", "frames"], title=f"(b) per-chunk latency, window {window} tokens")
    print_table(streams, ["case", "first_chunk_s", "median_chunk_s", "flow_s_per_audio_s", "max_chunk_s",
                          "max/median", "total_s", "init_s", "state_MB", "compile_and_warmup_s", "loadavg"],
                title="(b) streaming (fmjax), 20-s utterance, 25-token chunks")
    if parts:
        print_table(parts, ["window_tokens", "encoder_chunk_s", "estimator_ode_chunk_s", "estimator_per_eval_s",
                            "loadavg"], title="(c) one chunk, by part")
    write_json("bench_token2mel", {"config": "CosyVoice2 full size (Token2MelConfig())", "steps": STEPS,
                                   "cfg_weight": 0.7, "chunk_tokens": CHUNK, "lookahead": LOOKAHEAD,
                                   "offline": offline, "streaming": streams, "latencies": latencies,
                                   "parts": parts, "sidebyside": side, "agreement": checks, "interleaved": raw,
                                   "originals": None if orig is None else orig.facts(),
                                   "historical_torch_not_comparable": HISTORICAL})
    if checks and not all(c["ok"] for c in checks):
        sys.exit("fmjax and torch outputs disagree beyond the tolerance (see the agreement table)")


if __name__ == "__main__":
    main()
