"""Exported streaming steps (fmjax.export): serialized, loaded in a fresh process that imports no model code, stepped
twice, equal to the live step; bad artifacts and bad calls are clear errors.

Tolerance 1e-6 absolute: the loader runs the very StableHLO the live step compiles (same XLA, same machine), so the
outputs should agree to float32 rounding of differently fused programs at most (outputs are O(1)).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.export import export_hift_stream, export_token2mel_stream, load_token2mel_stream
from fmjax.models.hift import HiFTConfig, init_hift
from fmjax.pipelines.stream import Token2MelStream
from fmjax.vocoder_stream import init_vocoder_cache, vocoder_finalize, vocoder_step
from tests.models.test_flow import tiny_flow

pytestmark = pytest.mark.slow  # corpus training / subprocesses / full programs: the heaviest files (README, Tests)

TOL = 1e-6
C, L = 2, 3  # tiny_flow's chunk and look-ahead (tokens)

LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fmjax.export import load_hift_stream, load_token2mel_stream
    t2m_dir, hift_dir, inputs, out = sys.argv[1:5]
    d = np.load(inputs)
    t2m = load_token2mel_stream(t2m_dir)
    state = t2m.init(d["emb"], d["ptok"], d["pmel"])
    res = {}
    for i in range(2):
        state, mel, frames = t2m.step(state, d[f"tok{i}"], d[f"ahead{i}"])
        res[f"mel{i}"], res[f"frames{i}"] = mel, frames
    voc = load_hift_stream(hift_dir)
    cache = voc.init(key_data=d["key_data"])
    res["wav0"], cache = voc.window(cache, d["vmel0"], first=True)
    res["wav1"], cache = voc.window(cache, d["vmel1"])
    res["wav2"], cache = voc.window(cache, d["vmel2"], final=True)
    np.savez(out, **res)
    allowed = {"fmjax.nn", "fmjax.nn.masks"}  # ChunkSpec, imported by fmjax.cond (jax and numpy only, no layers)
    banned = [m for m in sys.modules if m.startswith(("fmjax.models", "fmjax.nn", "fmjax.pipelines", "flax"))
              and m not in allowed]
    print(json.dumps({"banned_modules": banned}))
""")


def tiny_hift():
    cfg = HiFTConfig(base_channels=16, f0_channels=8, f0_num_convs=2, resblock_kernel_sizes=(3,),
                     resblock_dilations=((1,),), source_resblock_kernel_sizes=(3, 3, 3),
                     source_resblock_dilations=((1,),) * 3)
    params = init_hift(cfg, seed=1)
    params["params"]["f0_predictor"]["classifier"]["kernel"] *= 500.0  # a voiced f0
    return cfg, params


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    model, params = tiny_flow(chunk=C)
    stream = Token2MelStream(model, window_tokens=8, n_steps=2)
    t2m_dir = export_token2mel_stream(stream, params, batch=2, path=tmp_path_factory.mktemp("t2m"))
    hcfg, hparams = tiny_hift()
    hift_dir = export_hift_stream(hcfg, hparams, batch=2, window_frames=10, path=tmp_path_factory.mktemp("hift"),
                                  final_lengths=(3,))
    return stream, params, t2m_dir, hcfg, hparams, hift_dir


def test_exported_steps_in_a_fresh_process_equal_the_live_steps(artifacts, tmp_path):
    stream, params, t2m_dir, hcfg, hparams, hift_dir = artifacts
    rng = np.random.default_rng(0)
    d = {"emb": rng.standard_normal((2, 12)).astype(np.float32), "ptok": rng.integers(0, 50, (2, 3)),
         "pmel": rng.standard_normal((2, 6, 80)).astype(np.float32), "key_data": np.array([0, 7], np.uint32)}
    toks = rng.integers(0, 50, (2, 2 * C + L))
    for i in range(2):
        d[f"tok{i}"], d[f"ahead{i}"] = toks[:, i * C:(i + 1) * C], toks[:, (i + 1) * C:(i + 1) * C + L]
    for i, t in enumerate((10, 10, 3)):
        d[f"vmel{i}"] = rng.standard_normal((2, t, 80)).astype(np.float32)
    np.savez(tmp_path / "in.npz", **d)
    proc = subprocess.run([sys.executable, "-c", LOADER, str(t2m_dir), str(hift_dir), str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["banned_modules"] == []
    got = np.load(tmp_path / "out.npz")

    state = stream.init(params, d["emb"], d["ptok"], d["pmel"])  # the live stream, same inputs
    for i in range(2):
        state, out = stream.step(params, state, d[f"tok{i}"], d[f"ahead{i}"])
        np.testing.assert_array_equal(got[f"frames{i}"], out.lengths, err_msg=f"step {i}: frames emitted")
        assert out.lengths.min() > 0, "the steps must emit frames for the comparison to mean something"
        err = float(np.abs(got[f"mel{i}"] - np.asarray(out.mel)).max())
        assert err <= TOL, f"step {i}: exported vs live mel max abs error {err:.3g} (tol {TOL})"

    cache = init_vocoder_cache(hcfg, 2, jax.random.wrap_key_data(jnp.asarray(d["key_data"]), impl="threefry2x32"))
    live = []
    for i, fn in enumerate((vocoder_step, vocoder_step, vocoder_finalize)):
        wav, cache = fn(hcfg, hparams, cache, jnp.asarray(d[f"vmel{i}"]))
        live.append(np.asarray(wav))
    for i, want in enumerate(live):
        assert got[f"wav{i}"].shape == want.shape, f"window {i}: {got[f'wav{i}'].shape} vs live {want.shape}"
        assert np.abs(want).max() > 1e-3, f"window {i}: live audio is silent; the comparison would be vacuous"
        err = float(np.abs(got[f"wav{i}"] - want).max())
        assert err <= TOL, f"window {i}: exported vs live audio max abs error {err:.3g} (tol {TOL})"


def test_manifest_describes_inputs_and_baked_configuration(artifacts):
    _, _, t2m_dir, _, _, _ = artifacts
    manifest = json.loads((t2m_dir / "manifest.json").read_text())
    step = manifest["functions"]["step"]
    assert manifest["baked_in"]["batch"] == 2 and manifest["baked_in"]["chunk_tokens"] == C
    assert manifest["baked_in"]["n_steps"] == 2 and manifest["baked_in"]["window_tokens"] == 8
    assert {"shape": [2, C], "dtype": "int32"} in step["inputs"]  # the tokens
    assert len(manifest["params"]["names"]) == manifest["params"]["leaves"]


def test_bad_artifact_and_bad_calls_are_clear_errors(artifacts, tmp_path):
    _, _, t2m_dir, _, _, hift_dir = artifacts
    with pytest.raises(ValueError, match="no readable fmjax export manifest"):
        load_token2mel_stream(tmp_path)
    with pytest.raises(ValueError, match="expected 'fmjax-export/1' / 'token2mel_stream'"):
        load_token2mel_stream(hift_dir)
    t2m = load_token2mel_stream(t2m_dir)
    with pytest.raises(ValueError, match="embedding: expected finite"):
        t2m.init(np.zeros((3, 12), np.float32))
    state = t2m.init(np.zeros((2, 12), np.float32))
    with pytest.raises(ValueError, match="tokens: expected shape"):
        t2m.step(state, np.zeros((2, C + 1), np.int32))
    with pytest.raises(ValueError, match="tokens: ids outside the vocabulary"):
        t2m.step(state, np.full((2, C), 50, np.int32))
