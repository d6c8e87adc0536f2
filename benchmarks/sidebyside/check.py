"""Checks the torch side of the side-by-side benchmarks against the reference fixtures, and fmjax against it.

    python benchmarks/sidebyside/check.py --cosyvoice /path/to/CosyVoice [--matcha PATH] [--full] [--no-fmjax]

(a) keys: the small builders' state dicts have the key sets and shapes of the fixtures'
    ``flow_small_state_dict.npz`` / ``hift_small_state_dict.npz``; with ``--full``, the full-size flow's and HiFT's
    those of ``tests/fixtures/state_dict_keys_{flow,hift}.txt`` and the SPEC's parameter counts.
(b) fixtures: the fixtures' small weights loaded into the builders reproduce the recorded outputs
    (estimator, flow inference, HiFT, CFM loss): the builders and procedures call the originals as the
    reference harness did.
(c) procedures at small size: the streaming procedure's output length (2·480 samples per token) and its
    chunk-masked frames against one ``flow.inference(streaming=True)`` over all tokens (SPEC §3: equal to float
    noise when chunks are aligned); two training steps with finite losses.
(d) fmjax (``--no-fmjax`` skips it; uses fmjax's current API, which may move): the builders' random small
    weights through ``fmjax.convert`` give the torch outputs.
(e) ``--full``: one forward of each full-size module on a short input (shapes only; a few seconds).

Tolerances: 1e-5 absolute for one estimator / HiFT filter pass (float32 noise on O(1) outputs is ~1e-6);
1e-4 for the 10 chained Euler steps of a flow inference (the reference README's guide). Prints a table and
writes ``benchmarks/results/sidebyside_check.json``; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import sys

import numpy as np
import torch

BENCH = pathlib.Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path[:0] = [str(BENCH), str(ROOT)]
from common import print_table, write_json  # noqa: E402
from sidebyside import build, procedures as proc  # noqa: E402
from sidebyside.originals import load_originals  # noqa: E402

ROWS: list[dict] = []


def record(name: str, err: float | None, tol: float | None, ok: bool | None = None, note: str = "") -> None:
    ok = (err is not None and err <= tol) if ok is None else ok
    ROWS.append({"check": name, "max_abs_err": err if err is not None else "", "tol": tol if tol is not None else "",
                 "ok": "yes" if ok else "NO", "note": note})
    print(ROWS[-1], flush=True)


def diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max())


def fixture(name: str) -> dict:
    with np.load(FIXTURES / name) as f:
        return {k: f[k] for k in f.files}


def shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def key_file(name: str) -> dict:
    out = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape, _ = line.split("\t")
        out[key] = tuple(ast.literal_eval(shape))
    return out


def same_keys(name: str, got: dict, want: dict) -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    record(name, None, None, not (missing or extra or wrong),
           f"{len(got)} tensors; missing {missing[:3]} extra {extra[:3]} mis-shaped {wrong[:3]}")


def check_fixtures(orig) -> None:
    flow, _ = build.build_flow(orig, size="small")
    build.load_numpy_state(flow, fixture("flow_small_state_dict.npz"))
    est = flow.decoder.estimator
    for name, streaming in (("est_full.npz", False), ("est_stream.npz", True)):
        f = fixture(name)
        inputs = {k: f[f"in/{k}"] for k in ("x", "mask", "mu", "t", "spks", "cond")}
        out = proc.estimator_call(est, inputs, streaming=streaming)()
        record(f"fixture {name} estimator", diff(out, f["out/y"]), 1e-5)
    f = fixture("flow_infer_full.npz")
    mel = proc.flow_offline_call(flow, f["in/token"], f["in/embedding"], prompt_tokens=f["in/prompt_token"],
                                 prompt_feat=f["in/prompt_feat"])()
    record("fixture flow_infer_full flow.inference", diff(mel, f["out/mel"]), 1e-4)
    f = fixture("cfm_loss_full.npz")
    torch.manual_seed(int(f["in/torch_seed"]))
    with torch.no_grad():
        loss, _ = flow.decoder.compute_loss(*(torch.from_numpy(f[f"in/{k}"]) for k in ("x1", "mask", "mu", "spks")),
                                            cond=torch.from_numpy(f["in/cond"]), streaming=bool(f["in/streaming"]))
    record("fixture cfm_loss_full compute_loss (torch seed)", diff(loss, f["out/loss"]), 1e-6)
    hift, _ = build.build_hift(orig, size="small")
    build.load_numpy_state(hift, fixture("hift_small_state_dict.npz"))
    f = fixture("hift_infer.npz")
    with torch.inference_mode():
        wav = hift.decode(x=torch.from_numpy(f["in/mel"]), s=torch.from_numpy(f["out/source"]))
    record("fixture hift_infer decode(mel, source)", diff(wav, f["out/wav"]), 1e-5)
    torch.manual_seed(int(f["in/torch_seed"]))
    rec = proc.hift_recorded(hift, f["in/mel"])
    record("fixture hift_infer inference (torch seed)", diff(rec["speech"], f["out/wav"]), 1e-5)
    record("fixture hift_infer recorded sine noise", diff(rec["sine_noise"], f["draw/sine_noise"]), 0.0)


def check_procedures(orig, flow, hift) -> None:
    n = 80  # small chunks are 5 tokens; hops of 25 stay aligned
    tokens, emb = proc.random_tokens(n, vocab=build.FLOW["small"]["vocab_size"], seed=3), proc.random_embedding(seed=4)
    out = proc.stream_cosyvoice2(orig, flow, hift, tokens, emb)
    calls = [(c["tokens"], c["token_offset"], c["finalize"]) for c in out["chunks"]]
    want = [(28, 0, False), (53, 25, False), (78, 50, False), (80, 75, True)]
    record("stream calls (tokens, offset, finalize), hop 25", None, None, calls == want, str(calls))
    record("stream output samples = 2·480·n", None, None, out["speech"].shape == (1, 2 * 480 * n),
           str(out["speech"].shape))
    full = proc.flow_offline_call(flow, tokens, emb, streaming=True)()
    record("stream chunk frames vs one chunk-masked inference", diff(out["mel"][:, :, :150], full[:, :, :150]), 1e-4,
           note="frames 0-149 (the three non-final calls)")
    grown = proc.stream_cosyvoice2(orig, flow, hift, proc.random_tokens(210, vocab=100, seed=5), emb, hop_growth=True)
    calls = [(c["tokens"], c["token_offset"]) for c in grown["chunks"]]
    record("stream hop growth 25, 50, 100", None, None, calls == [(28, 0), (78, 25), (178, 75), (210, 175)],
           str(calls))
    train_flow, _ = build.build_flow(orig, size="small", seed=1)  # a copy: the steps change its weights
    step = proc.make_train_step(train_flow, seed=0)
    batch = proc.train_batch(2, 40, vocab=100, seed=0)
    losses = [step(batch) for _ in range(2)]
    record("train step x2 (small, 2 x 40 frames)", None, None, all(np.isfinite(losses)), f"losses {losses}")


def check_fmjax(orig, flow, flow_sd, hift, hift_sd) -> None:
    import jax.numpy as jnp

    from fmjax.cond import MelCond
    from fmjax.convert.causal_unet import convert_causal_unet
    from fmjax.convert.flow import convert_flow
    from fmjax.convert.hift import convert_hift
    from fmjax.models.causal_unet import CausalConditionalDecoder
    from fmjax.models.flow import CosyVoice2Flow
    from fmjax.models.hift import hift_decode, hift_inference
    from fmjax.token2mel import token2mel

    tl = lambda a: np.swapaxes(np.asarray(a), -1, -2)  # noqa: E731  torch (B, C, T) -> fmjax (B, T, C)
    cfg, params = convert_causal_unet(flow_sd, num_heads=4, chunk_size=10, preset="cosyvoice2")
    inp = proc.estimator_inputs(2, 37, seed=1)
    ref = proc.estimator_call(flow.decoder.estimator, inp)()
    cond = MelCond(tl(inp["mu"]), inp["spks"], tl(inp["cond"]), inp["mask"][:, 0])
    v = CausalConditionalDecoder(cfg).apply(params, tl(inp["x"]), cond, jnp.asarray(inp["t"]))[0]
    record("fmjax estimator (convert_causal_unet) vs torch", diff(tl(v), ref), 1e-5,
           note=f"torch output std {float(ref.std()):.3g}")
    cfg, params = convert_flow(flow_sd, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    tokens, emb = proc.random_tokens(40, vocab=100, seed=6), proc.random_embedding(seed=7)
    ref = proc.flow_offline_call(flow, tokens, emb)()
    mel = token2mel(CosyVoice2Flow(cfg), params, tokens, emb).mel
    record("fmjax flow token2mel (convert_flow) vs torch flow.inference", diff(tl(mel), ref), 1e-4,
           note=f"torch mel std {float(ref.std()):.3g}")
    hcfg, hparams = convert_hift(hift_sd, preset="cosyvoice2")
    mel = np.random.default_rng(8).standard_normal((1, 80, 30)).astype(np.float32)
    rec = proc.hift_recorded(hift, mel)
    wav = hift_decode(hcfg, hparams, tl(mel), rec["source"])
    record("fmjax hift_decode (convert_hift) vs torch decode", diff(wav, rec["speech"]), 1e-5)
    wav, _ = hift_inference(hcfg, hparams, tl(mel), sine_noise=rec["sine_noise"])
    record("fmjax hift_inference(sine_noise) vs torch inference", diff(wav, rec["speech"]), 1e-4,
           note="source through f0 -> sine phases: 1e-4")


def check_full(orig, with_fmjax: bool) -> None:
    flow, sd = build.build_flow(orig, size="full")
    same_keys("full flow state dict == state_dict_keys_flow.txt", shapes(sd), key_file("state_dict_keys_flow.txt"))
    if with_fmjax:
        from fmjax.convert.common import count_parameters
        from fmjax.convert.flow import convert_flow
        from fmjax.models.flow import Token2MelConfig

        cfg, params = convert_flow(sd, preset="cosyvoice2")
        record("full fmjax convert_flow(torch state dict, preset=cosyvoice2)", None, None,
               cfg == Token2MelConfig() and count_parameters(params) == 112_549_360, "default config, all params")
        del params
    record("full flow params 112,549,360", None, None, build.n_params(flow) == 112_549_360, str(build.n_params(flow)))
    record("full estimator params 71,302,480", None, None, build.n_params(flow.decoder.estimator) == 71_302_480,
           str(build.n_params(flow.decoder.estimator)))
    inp = proc.estimator_inputs(2, 20)
    y = proc.estimator_call(flow.decoder.estimator, inp)()
    ok = tuple(y.shape) == (2, 80, 20) and bool(torch.isfinite(y).all())
    record("full estimator forward (2, 80, 20)", None, None, ok, f"std {float(y.std()):.3g}")
    if with_fmjax:
        import jax.numpy as jnp

        from fmjax.cond import MelCond
        from fmjax.convert.causal_unet import convert_causal_unet
        from fmjax.models.causal_unet import CausalConditionalDecoder

        tl = lambda a: np.swapaxes(np.asarray(a), -1, -2)  # noqa: E731
        cfg, params = convert_causal_unet(sd, preset="cosyvoice2")
        cond = MelCond(tl(inp["mu"]), inp["spks"], tl(inp["cond"]), inp["mask"][:, 0])
        v = CausalConditionalDecoder(cfg).apply(params, tl(inp["x"]), cond, jnp.asarray(inp["t"]))[0]
        record("full fmjax estimator vs torch (2, 80, 20)", diff(tl(v), y), 1e-4,
               note="64 transformer + 16 resnet blocks deep: 1e-4")
        del params
    mel = proc.flow_offline_call(flow, proc.random_tokens(8), proc.random_embedding())()
    record("full flow.inference 8 tokens -> (1, 80, 16)", None, None, tuple(mel.shape) == (1, 80, 16),
           f"std {float(mel.std()):.3g}")
    del flow, sd
    hift, sd = build.build_hift(orig, size="full")
    same_keys("full HiFT state dict == state_dict_keys_hift.txt", shapes(sd), key_file("state_dict_keys_hift.txt"))
    if with_fmjax:
        from fmjax.convert.hift import convert_hift
        from fmjax.models.hift import HiFTConfig

        cfg, _ = convert_hift(sd, preset="cosyvoice2")
        record("full fmjax convert_hift(torch state dict, preset=cosyvoice2)", None, None, cfg == HiFTConfig(), str(cfg)[:60])
    record("full HiFT params 20,821,295", None, None, build.n_params(hift) == 20_821_295, str(build.n_params(hift)))
    speech, source = proc.hift_call(hift, np.random.default_rng(0).standard_normal((1, 80, 10), np.float32))()
    record("full HiFT inference 10 frames -> 4800 samples", None, None, tuple(speech.shape) == (1, 4800),
           f"|speech| max {float(speech.abs().max()):.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cosyvoice", default=os.environ.get("COSYVOICE_DIR"), help="CosyVoice checkout "
                    "(default $COSYVOICE_DIR)")
    ap.add_argument("--matcha", default=None, help="Matcha-TTS checkout (default <cosyvoice>/third_party/Matcha-TTS)")
    ap.add_argument("--full", action="store_true", help="also build the full-size modules (about 1 GB, a minute)")
    ap.add_argument("--no-fmjax", action="store_true", help="skip the fmjax agreement checks")
    args = ap.parse_args()
    if not args.cosyvoice:
        ap.error("--cosyvoice: give the path of a CosyVoice checkout (or set COSYVOICE_DIR)")
    try:
        orig = load_originals(args.cosyvoice, args.matcha)
    except (FileNotFoundError, ImportError, RuntimeError) as e:
        ap.error(str(e))
    print(orig.facts(), flush=True)
    flow, flow_sd = build.build_flow(orig, size="small", seed=0)
    hift, hift_sd = build.build_hift(orig, size="small", seed=0)
    same_keys("small flow state dict == flow_small_state_dict.npz", shapes(flow_sd),
              shapes(fixture("flow_small_state_dict.npz")))
    same_keys("small HiFT state dict == hift_small_state_dict.npz", shapes(hift_sd),
              shapes(fixture("hift_small_state_dict.npz")))
    check_fixtures(orig)
    check_procedures(orig, flow, hift)
    if not args.no_fmjax:
        check_fmjax(orig, flow, flow_sd, hift, hift_sd)
    if args.full:
        check_full(orig, not args.no_fmjax)
    print_table(ROWS, ["check", "max_abs_err", "tol", "ok", "note"], title="side-by-side torch checks")
    write_json("sidebyside_check", {"originals": orig.facts(), "rows": ROWS})
    sys.exit(0 if all(r["ok"] == "yes" for r in ROWS) else 1)


if __name__ == "__main__":
    main()
