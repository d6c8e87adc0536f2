"""Full-size CosyVoice2 token2mel (112.5 M params, random weights, fp32): offline and streaming, 10 Euler steps, CFG.

    python benchmarks/bench_token2mel.py [--quick] [--windows 100,500] [--skip-offline]

(a) offline: a 10-s utterance (250 tokens, no prompt), full-context attention. Reference: CosyVoice2's PyTorch
    ``flow.inference`` on this machine kind, 11.68 s; target <= 4.5 s.
(b) streaming: a 20-s utterance (500 tokens) in 25-token chunks with 3 look-ahead tokens, through
    :class:`fmjax.token2mel_stream.Token2MelStream` (one compiled step; the last chunk is the final step), for each
    K/V window (in tokens; 500 holds the whole stream, i.e. exactly CosyVoice2 HEAD's all-left-context chunk
    masks). Per-chunk latency, first chunk, total, max/median. Targets: every chunk <= 1 s, max/median <= 1.3,
    total <= 25 s (CosyVoice2 recomputing the prefix: 1.28 s first chunk, 28 s last, 272 s total).
(c) where a chunk's time goes: the encoder's chunk step and the estimator's whole ODE for one chunk
    (:func:`fmjax.streaming.sample_chunk`, 10 steps x CFG pair) timed alone with the same window.

Compilation is timed separately and excluded from the latencies (a warm-up stream compiles the step first).
The 1-minute load average is printed with the numbers: other jobs on the machine inflate them.
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

from fmjax.cond import MelCond  # noqa: E402
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, flow_param_shapes  # noqa: E402
from fmjax.noise import cosyvoice_noise  # noqa: E402
from fmjax.samplers import classifier_free_guidance_cached  # noqa: E402
from fmjax.streaming import init_sampler_caches, sample_chunk  # noqa: E402
from fmjax.timesteps import cosine_grid  # noqa: E402
from fmjax.token2mel import token2mel  # noqa: E402
from fmjax.token2mel_stream import Token2MelStream  # noqa: E402

TORCH_OFFLINE_S = 11.68  # CosyVoice2 flow.inference, 250 tokens, CPU (issue 4)
TORCH_STREAM_S = {"first": 1.28, "last": 28.0, "total": 272.0}
CHUNK, LOOKAHEAD, STEPS = 25, 3, 10


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
    block(token2mel(model, params, tokens[:, :250], emb).mel)
    first = time.perf_counter() - t0
    timing = time_call(lambda: token2mel(model, params, tokens[:, :250], emb).mel, repeats=repeats, warmup=0)
    row = {"case": "offline 250 tok", "median_s": timing["median_s"], "min_s": timing["min_s"],
           "first_call_s": first, "torch_s": TORCH_OFFLINE_S, "speedup": TORCH_OFFLINE_S / timing["median_s"],
           "target_s": 4.5, "loadavg": load()}
    print(row, flush=True)
    return row


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
    stream = Token2MelStream(model, window_tokens=window, n_steps=STEPS)
    params = stream.prepare_params(params)  # the U-Net's mid stages split: read in place by every evaluation
    t0 = time.perf_counter()
    run_stream(stream, params, tokens[:, : 2 * CHUNK], emb)  # compiles the step (and warms it up)
    compile_s = time.perf_counter() - t0
    lat, frames, state, init_s = run_stream(stream, params, tokens, emb)
    assert sum(frames) == 2 * tokens.shape[1], frames
    med = statistics.median(lat)
    row = {"case": f"stream W={window} tok", "window_tokens": window, "window_frames": 2 * window,
           "first_chunk_s": lat[0], "median_chunk_s": med, "max_chunk_s": max(lat), "max/median": max(lat) / med,
           "total_s": sum(lat), "chunks": len(lat), "init_s": init_s, "state_MB": stream.state_nbytes(1) / 2**20,
           "compile_and_warmup_s": compile_s, "loadavg": load()}
    print(row, flush=True)
    return row, lat, frames


def bench_parts(model, params, window, repeats):
    """The encoder chunk step and the estimator's 10-step CFG ODE for one chunk, alone (same window)."""
    cfg = model.config
    params = model.streaming_params(params)
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

    def ode_fn(params, x0, cond, caches):
        def velocity(t, x, cond, cache):
            return model.apply(params, x, cond, t, cache, method="estimate")

        guided = classifier_free_guidance_cached(velocity, 0.7)
        return sample_chunk(guided, x0, cond, jnp.asarray(cosine_grid(STEPS), jnp.float32), caches)

    ode = jax.jit(ode_fn, donate_argnums=3)
    state["est"] = init_sampler_caches(model.init_estimator_cache(2, r * window), STEPS)
    x0 = jnp.asarray(cosyvoice_noise(r * c, m))[None]
    cond = MelCond(jnp.ones((1, r * c, m)), jnp.ones((1, cfg.spk_dim)), jnp.zeros((1, r * c, m)), jnp.ones((1, r * c)))

    def run_ode():
        x1, state["est"] = ode(params, x0, cond, state["est"])
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one timed repeat")
    ap.add_argument("--windows", default="100,500", help="comma-separated K/V windows in tokens")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-parts", action="store_true")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    windows = [int(w) for w in args.windows.split(",")]
    config = Token2MelConfig()
    model = CosyVoice2Flow(config)
    params = random_params(model)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, (1, 500))
    emb = rng.standard_normal((1, config.spk_embed_dim)).astype(np.float32)
    print(f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} CPUs, load {load():.2f}", flush=True)

    offline = [] if args.skip_offline else [bench_offline(model, params, tokens, emb, repeats)]
    streams, latencies, parts = [], {}, []
    for window in windows:
        row, lat, frames = bench_stream(model, params, tokens, emb, window)
        streams.append(row)
        latencies[window] = {"latency_s": lat, "frames": frames}
        if not args.skip_parts:
            parts.append(bench_parts(model, params, window, repeats))

    if offline:
        print_table(offline, ["case", "median_s", "min_s", "first_call_s", "torch_s", "speedup", "target_s",
                              "loadavg"], title="(a) offline, 10-s utterance")
    for window in windows:
        lat = latencies[window]["latency_s"]
        rows = [{"chunk": i, "latency_s": s, "frames": f} for i, (s, f) in
                enumerate(zip(lat, latencies[window]["frames"]))]
        print_table(rows, ["chunk", "latency_s", "frames"], title=f"(b) per-chunk latency, window {window} tokens")
    print_table(streams, ["case", "first_chunk_s", "median_chunk_s", "max_chunk_s", "max/median", "total_s",
                          "init_s", "state_MB", "compile_and_warmup_s", "loadavg"],
                title="(b) streaming, 20-s utterance, 25-token chunks (CosyVoice2: first 1.28 s, total 272 s)")
    if parts:
        print_table(parts, ["window_tokens", "encoder_chunk_s", "estimator_ode_chunk_s", "estimator_per_eval_s",
                            "loadavg"], title="(c) one chunk, by part")
    write_json("bench_token2mel", {"config": "CosyVoice2 full size (Token2MelConfig())", "steps": STEPS,
                                   "cfg_weight": 0.7, "chunk_tokens": CHUNK, "lookahead": LOOKAHEAD,
                                   "offline": offline, "streaming": streams, "latencies": latencies,
                                   "parts": parts, "torch_reference": {"offline_s": TORCH_OFFLINE_S,
                                                                       "stream": TORCH_STREAM_S}})


if __name__ == "__main__":
    main()
