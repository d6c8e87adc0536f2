"""CosyVoice3 flow: parity with the real torch classes (small fixture), streaming == offline chunk-masked,
ragged batches, converter key errors and checkpoint round trip."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.convert.common import StateDictError, count_parameters
from fmjax.convert.flow import load_flow_checkpoint, save_flow_checkpoint
from fmjax.convert.flow_cv3 import convert_flow_cv3
from fmjax.models.flow import flow_param_shapes
from fmjax.models.flow_cv3 import CosyVoice3Flow, CosyVoice3FlowConfig
from fmjax.token2mel import token2mel
from fmjax.token2mel_stream import Token2MelStream
from tests.conftest import FIXTURES, load_fixture
from tests.test_token2mel_stream import stream_all

SMALL = FIXTURES / "cv3_flow_small_state_dict.npz"


@pytest.fixture(scope="module")
def cv3():
    config, params = convert_flow_cv3(SMALL, chunk_size=5, preset="cosyvoice3")
    return CosyVoice3Flow(config), params


def _t(a):
    return np.swapaxes(a, -1, -2)


def test_cv3_flow_inference_matches_torch_fixture(cv3):
    model, params = cv3
    f = load_fixture("cv3_flow_infer_full.npz")
    out = token2mel(model, params, f["in/token"], f["in/embedding"], prompt_tokens=f["in/prompt_token"],
                    prompt_mel=f["in/prompt_feat"], return_aux=True)
    aux = {k: np.asarray(v) for k, v in out.aux.items()}
    checks = {
        "out/mel": (np.asarray(out.mel), _t(f["out/mel"])),
        "aux/spks": (aux["spks"], f["aux/spks"]),
        "aux/pre_lookahead_out": (aux["encoder_out"], f["aux/pre_lookahead_out"]),
        "aux/mu": (aux["mu"], _t(f["aux/mu"])),
        "aux/cond": (aux["prompt"], _t(f["aux/cond"])),
        "aux/noise_z": (aux["noise"], _t(f["aux/noise_z"])),
        "aux/x_traj": (aux["trajectory"], _t(f["aux/x_traj"])),
    }
    for name, (got, ref) in checks.items():
        assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
        err = float(np.abs(got - ref).max())
        assert err < 1e-4, f"{name}: max abs error vs torch {err:.3g} (tol 1e-4)"
    emb = model.apply(params, np.concatenate([f["in/prompt_token"], f["in/token"]], 1),
                      method=lambda m, tok: m.input_embedding(tok))
    np.testing.assert_allclose(np.asarray(emb), f["aux/token_emb"], atol=1e-6)
    # the per-step estimator calls (row 1 = the unconditional CFG row)
    mu, cond, spks = _t(f["aux/mu"]), _t(f["aux/cond"]), f["aux/spks"]
    zero, n = np.zeros_like(mu), f["aux/est_in_x"].shape[0]
    x = _t(f["aux/est_in_x"]).reshape(2 * n, *mu.shape[1:])
    c = MelCond(np.tile(np.concatenate([mu, zero]), (n, 1, 1)), np.tile(np.concatenate([spks, 0 * spks]), (n, 1)),
                np.tile(np.concatenate([cond, zero]), (n, 1, 1)), np.ones(x.shape[:2], np.float32))
    v, _ = jax.jit(lambda p, x, c, t: model.apply(p, x, c, t, method="estimate"))(
        params, x, c, f["aux/est_in_t"].reshape(-1)
    )
    err = float(np.abs(np.asarray(v).reshape(n, 2, *mu.shape[1:]) - _t(f["aux/est_out"])).max())
    assert err < 1e-4, f"DiT outputs over the 10 steps: max abs error vs torch {err:.3g} (tol 1e-4)"


def test_cv3_stream_equals_offline_chunk_masked(cv3):
    """Fixture weights, C = 5 tokens, prompts of 7 (not aligned) and 10 (aligned) tokens, ragged rows: the
    streamed frames equal offline chunk-masked inference of each row alone."""
    model, params = cv3
    rng = np.random.default_rng(0)
    tokens, emb = rng.integers(0, 100, (2, 18)), rng.standard_normal((2, 192)).astype(np.float32)
    prompt, pmel = rng.integers(0, 100, (2, 10)), rng.standard_normal((2, 20, 80)).astype(np.float32)
    lengths, plens = np.array([18, 13]), np.array([7, 10])
    offline = token2mel(model, params, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                        prompt_lengths=plens, streaming=True, n_steps=4)
    stream = Token2MelStream(model, window_tokens=25, n_steps=4)
    streamed, _ = stream_all(stream, params, tokens, lengths, emb, prompt, pmel, plens)
    for i in range(2):
        ref = np.asarray(offline.mel[i, : 2 * lengths[i]])
        assert streamed[i].shape == ref.shape
        err = float(np.abs(streamed[i] - ref).max())
        assert err < 1e-4, f"row {i}: streamed vs offline chunk-masked {err:.3g} (tol 1e-4)"
    # CosyVoice3's padding embeds to zeros, so a ragged offline batch equals its rows alone
    alone = token2mel(model, params, tokens[1:, :13], emb[1:], prompt_tokens=prompt[1:], prompt_mel=pmel[1:],
                      streaming=True, n_steps=4)
    err = float(np.abs(np.asarray(alone.mel[0]) - np.asarray(offline.mel[1, :26])).max())
    assert err < 1e-5, f"ragged row vs alone {err:.3g} (tol 1e-5)"


def test_cv3_convert_config_keys_and_checkpoint(cv3, tmp_path):
    model, params = cv3
    assert model.config.lookahead_channels == 48 and model.config.estimator.depth == 2
    shapes = flow_param_shapes(model)
    assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(lambda s: s.shape, shapes)
    with np.load(SMALL) as f:
        state = {k: f[k] for k in f.files}
    stored = sum(v.size for k, v in state.items() if k != "decoder.estimator.rotary_embed.inv_freq")  # a buffer
    assert count_parameters(params) == stored
    bad = dict(state)
    del bad["pre_lookahead_layer.conv2.bias"]
    bad["spk_embed_affine_layer.bias"] = np.zeros(3, np.float32)
    bad["decoder.estimator.proj_out.bias"] = np.zeros(81, np.float32)
    bad["extra"] = np.zeros(1, np.float32)
    with pytest.raises(StateDictError) as info:
        convert_flow_cv3(bad, chunk_size=5, preset="cosyvoice3")
    msg = str(info.value)
    for name in ("pre_lookahead_layer.conv2.bias", "spk_embed_affine_layer.bias: expected shape (80,), got (3,)",
                 "proj_out.bias: expected shape (80,), got (81,)", "unexpected keys (1): extra"):
        assert name in msg, f"{name!r} not named in:\n{msg}"
    path = save_flow_checkpoint(tmp_path / "cv3", model.config, params)
    config, loaded = load_flow_checkpoint(path)
    assert config == model.config and isinstance(config, CosyVoice3FlowConfig)
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), loaded, params)
    assert jax.tree_util.tree_all(same)


def test_cv3_default_config_is_cosyvoice3():
    cfg = CosyVoice3FlowConfig()
    assert (cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len, cfg.token_dim) == (25, 2, 3, 80)
    assert cfg.estimator.chunk_size == 50 and cfg.lookahead_channels == 1024
    with pytest.raises(ValueError, match="chunk_size: expected chunk_size · token_mel_ratio = 20"):
        CosyVoice3FlowConfig(chunk_size=10)
