"""CosyVoice2 flow: parity with the real torch classes (small fixture), speaker projection, config checks.

``tiny_flow`` (a random flow smaller than the fixture's, built without compiling ``init``) is shared by the
token2mel tests.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.convert.flow import convert_flow
from fmjax.models.causal_unet import CausalUNetConfig
from fmjax.models.encoder import EncoderConfig
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, flow_param_shapes, normalize_speaker
from fmjax.nn.tokens import frame_mask
from fmjax.token2mel import token2mel
from tests.conftest import FIXTURES, load_fixture

SMALL = FIXTURES / "flow_small_state_dict.npz"


def tiny_config(chunk: int = 2, left: int = -1) -> Token2MelConfig:
    """A 1+1-layer encoder and a 1-mid-block estimator: compiles in seconds."""
    enc = EncoderConfig(input_size=16, output_size=16, heads=2, linear_units=32, num_blocks=1, num_up_blocks=1,
                        lookahead_channels=16, static_chunk_size=chunk, num_left_chunks=left)
    est = CausalUNetConfig(channels=16, n_blocks=1, num_mid_blocks=1, num_heads=2, head_dim=8, ff_mult=2,
                           chunk_size=2 * chunk, num_left_chunks=left)
    return Token2MelConfig(vocab_size=50, spk_embed_dim=12, encoder=enc, estimator=est)


def tiny_flow(chunk: int = 2, left: int = -1, seed: int = 0):
    """``(model, params)`` with random params (biases and norm affines random too); the params do not depend on
    ``chunk``/``left``, so configs that differ only there share them."""
    model = CosyVoice2Flow(tiny_config(chunk, left))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        x = rng.standard_normal(s.shape).astype(np.float32)
        if "kernel" in name:
            return x / np.sqrt(np.prod(s.shape[:-1]))
        if "embedding" in name:
            return x
        return 1.0 + 0.2 * x if "scale" in name else 0.2 * x

    return model, jax.tree_util.tree_map_with_path(draw, flow_param_shapes(model))


@pytest.fixture(scope="module")
def small():
    config, params = convert_flow(SMALL, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    return CosyVoice2Flow(config), params


def _t(a):
    """torch ``(..., C, T)`` -> fmjax ``(..., T, C)``."""
    return np.swapaxes(a, -1, -2)


def test_flow_inference_matches_torch_fixture(small):
    """``flow.inference`` (prompt 7 tokens / 14 frames, 20 tokens, full context, 10 cosine Euler steps, CFG 0.7):
    the output mel and every recorded intermediate."""
    model, params = small
    f = load_fixture("flow_infer_full.npz")
    out = token2mel(model, params, f["in/token"], f["in/embedding"], prompt_tokens=f["in/prompt_token"],
                    prompt_mel=f["in/prompt_feat"], return_aux=True)
    aux = {k: np.asarray(v) for k, v in out.aux.items()}
    checks = {
        "out/mel": (np.asarray(out.mel), _t(f["out/mel"])),
        "aux/spks": (aux["spks"], f["aux/spks"]),
        "aux/encoder_out": (aux["encoder_out"], f["aux/encoder_out"]),
        "aux/mu": (aux["mu"], _t(f["aux/mu"])),
        "aux/cond": (aux["prompt"], _t(f["aux/cond"])),
        "aux/noise_z": (aux["noise"], _t(f["aux/noise_z"])),
        "aux/t_span": (aux["grid"], f["aux/t_span"]),
        "aux/x_traj": (aux["trajectory"], _t(f["aux/x_traj"])),
    }
    for name, (got, ref) in checks.items():
        assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
        err = float(np.abs(got - ref).max())
        assert err < 1e-4, f"{name}: max abs error vs torch {err:.3g} (tol 1e-4)"
    np.testing.assert_array_equal(aux["mask"], f["aux/mask"][:, 0])
    np.testing.assert_array_equal(np.asarray(out.lengths), [40])


def test_flow_estimator_steps_match_torch_fixture(small):
    """Each recorded Euler step's batch-doubled estimator call (row 1 = the unconditional CFG row)."""
    model, params = small
    f = load_fixture("flow_infer_full.npz")
    mu, cond, spks = _t(f["aux/mu"]), _t(f["aux/cond"]), f["aux/spks"]
    zero = np.zeros_like(mu)
    n = f["aux/est_in_x"].shape[0]
    x = _t(f["aux/est_in_x"]).reshape(2 * n, *mu.shape[1:])  # [10·2, T, m], rows (cond, uncond) per step
    c = MelCond(np.tile(np.concatenate([mu, zero]), (n, 1, 1)), np.tile(np.concatenate([spks, 0 * spks]), (n, 1)),
                np.tile(np.concatenate([cond, zero]), (n, 1, 1)), np.ones(x.shape[:2], np.float32))
    v, _ = jax.jit(lambda p, x, c, t: model.apply(p, x, c, t, method="estimate"))(
        params, x, c, f["aux/est_in_t"].reshape(-1)
    )
    err = float(np.abs(np.asarray(v).reshape(n, 2, *mu.shape[1:]) - _t(f["aux/est_out"])).max())
    assert err < 1e-4, f"estimator outputs over the 10 steps: max abs error vs torch {err:.3g} (tol 1e-4)"
    # The recorded inputs are the trajectory: step s feeds x after step s-1 to both CFG rows.
    np.testing.assert_array_equal(f["aux/est_in_x"][1:, 0], f["aux/x_traj"][:-1, 0])


def test_speaker_projection_normalises_with_torch_eps():
    model, params = tiny_flow()
    emb = np.array([[3.0, 4.0] + [0.0] * 10, [0.0] * 12], np.float32)
    unit = np.asarray(normalize_speaker(emb))
    np.testing.assert_allclose(unit[0, :2], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(unit[1], 0.0)  # the zero vector stays zero (no division by 0)
    spks = np.asarray(model.apply(params, emb, method="speaker"))
    dense = params["params"]["spk_embed_affine_layer"]
    np.testing.assert_allclose(spks, unit @ dense["kernel"] + dense["bias"], atol=1e-6)
    scaled = np.asarray(model.apply(params, 7.0 * emb, method="speaker"))
    np.testing.assert_allclose(scaled, spks, atol=1e-6)  # invariant to the embedding's scale
    with pytest.raises(ValueError, match=r"embedding: expected a speaker embedding of shape \[b, 12\]"):
        model.apply(params, emb[:, :11], method="speaker")


def test_encode_checks_token_ids():
    model, params = tiny_flow()
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 50\)"):
        model.apply(params, jnp.array([[1, 50]]), method="encode")
    encode = jax.jit(lambda p, tokens, n: model.apply(p, tokens, n, method="encode"))
    mu, cache = encode(params, jnp.array([[1, 2, 99]]), jnp.array([2]))  # padded positions may hold any id
    assert mu.shape == (1, 6, 80) and cache is None
    np.testing.assert_array_equal(np.asarray(frame_mask(jnp.array([2]), 1, 3, 2)), [[1, 1, 1, 1, 0, 0]])


def test_flows_implement_the_protocol():
    from fmjax.models.flow_cv3 import CosyVoice3Flow
    from fmjax.models.protocol import Flow, check_flow
    from fmjax.models.token_unet import TokenUNet

    for model in (CosyVoice2Flow(tiny_config()), CosyVoice3Flow(), TokenUNet()):
        assert isinstance(model, Flow)
        check_flow(model)
    assert not TokenUNet().config.causal and CosyVoice2Flow().config.causal
    with pytest.raises(TypeError, match="model: expected a flow"):
        check_flow(object())


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(estimator=dataclasses.replace(tiny_config().estimator, chunk_size=5)), "chunk_size: expected"),
        (dict(estimator=dataclasses.replace(tiny_config().estimator, num_left_chunks=1)), "num_left_chunks"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(encoder=None), "EncoderConfig"),
    ],
)
def test_config_validation(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(tiny_config(), **change)


def test_default_config_is_cosyvoice2():
    cfg = Token2MelConfig()
    assert (cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len, cfg.num_left_chunks) == (25, 2, 3, -1)
    assert (cfg.vocab_size, cfg.spk_embed_dim, cfg.mel_dim, cfg.estimator.chunk_size) == (6561, 192, 80, 50)
