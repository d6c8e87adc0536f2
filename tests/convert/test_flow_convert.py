"""CosyVoice2 flow converter: inferred config and layout, full-size shapes, every bad key named at once, orbax
checkpoints that load without torch."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.convert.common import StateDictError, count_parameters
from fmjax.convert.flow import (
    config_from_dict, config_to_dict, convert_flow, load_flow_checkpoint, save_flow_checkpoint,
)
from fmjax.models.causal_unet import CausalUNetConfig
from fmjax.models.encoder import EncoderConfig
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, flow_param_shapes
from tests.conftest import FIXTURES

SMALL = FIXTURES / "flow_small_state_dict.npz"


def _small_state() -> dict[str, np.ndarray]:
    with np.load(SMALL) as f:
        return {k: f[k] for k in f.files}


def _same(a, b) -> bool:
    same = jax.tree_util.tree_map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and jax.tree_util.tree_all(same)


def test_convert_small_fixture_config_and_layout():
    state = _small_state()
    config, params = convert_flow(SMALL, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    assert config == Token2MelConfig(
        vocab_size=100, spk_embed_dim=192,
        encoder=EncoderConfig(input_size=64, output_size=64, heads=2, linear_units=128, num_blocks=2,
                              lookahead_channels=64, static_chunk_size=5),
        estimator=CausalUNetConfig(channels=64, n_blocks=1, num_mid_blocks=2, num_heads=4, head_dim=32,
                                   chunk_size=10),
    )
    shapes = flow_param_shapes(CosyVoice2Flow(config))
    assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(lambda s: s.shape, shapes)
    assert count_parameters(params) == sum(v.size for v in state.values())
    p = params["params"]
    np.testing.assert_array_equal(p["input_embedding"]["embedding"], state["input_embedding.weight"])
    np.testing.assert_array_equal(p["spk_embed_affine_layer"]["kernel"], state["spk_embed_affine_layer.weight"].T)
    np.testing.assert_array_equal(p["encoder_proj"]["bias"], state["encoder_proj.bias"])
    np.testing.assert_array_equal(p["encoder"]["after_norm"]["scale"], state["encoder.after_norm.weight"])
    np.testing.assert_array_equal(p["decoder"]["final_proj"]["kernel"],
                                  state["decoder.estimator.final_proj.weight"].transpose(2, 1, 0))
    assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(params))


def _full_size_state(seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors with the shapes of CosyVoice2's flow.pt (state_dict_keys_flow.txt)."""
    rng = np.random.default_rng(seed)
    state = {}
    for line in (FIXTURES / "state_dict_keys_flow.txt").read_text().splitlines():
        name, shape, _ = line.split("\t")
        shape = ast.literal_eval(shape)
        x = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) > 1:
            x *= 1.0 / np.sqrt(np.prod(shape[1:]))
        elif name.endswith(".weight"):  # LayerNorm scales
            x = 1.0 + 0.1 * x
        else:
            x *= 0.1
        state[name] = x
    return state


def test_convert_full_size_shapes_and_run():
    """1121 tensors / 112,549,360 parameters convert to the default config and run a short input."""
    state = _full_size_state()
    assert len(state) == 1121
    config, params = convert_flow(state, preset="cosyvoice2")
    del state
    assert config == Token2MelConfig()
    assert count_parameters(params) == 112_549_360
    model = CosyVoice2Flow(config)
    tokens, emb = jnp.array([[0, 6560, 17]]), jnp.ones((1, 192))
    v = jax.jit(model.apply)(params, tokens, emb, jnp.ones((1, 6, 80)), jnp.array([0.5]))
    assert v.shape == (1, 6, 80) and np.isfinite(np.asarray(v)).all() and float(jnp.abs(v).max()) > 0
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 6561\)"):
        model.apply(params, jnp.array([[6561]]), emb, jnp.ones((1, 2, 80)), jnp.array([0.5]))


def test_convert_names_every_bad_key():
    state = _small_state()
    del state["encoder.encoders.1.norm_ff.bias"]
    del state["decoder.estimator.mid_blocks.1.0.res_conv.bias"]
    state["spk_embed_affine_layer.bias"] = np.zeros(81, np.float32)
    state["decoder.estimator.final_proj.weight"] = np.zeros((80, 64, 3), np.float32)
    state["encoder_proj.extra"] = np.zeros(2, np.float32)
    state["decoder.rand_noise"] = np.zeros((1, 80, 4), np.float32)
    state["decoder.estimator.extra"] = np.zeros(1, np.float32)
    with pytest.raises(StateDictError) as info:
        convert_flow(state, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    msg = str(info.value)
    for name in ("encoder.encoders.1.norm_ff.bias", "mid_blocks.1.0.res_conv.bias", "spk_embed_affine_layer.bias",
                 "final_proj.weight: expected shape (80, 64, 1), got (80, 64, 3)", "encoder_proj.extra",
                 "decoder.rand_noise", "extra"):
        assert name in msg, f"{name!r} not named in:\n{msg}"
    assert "missing keys" in msg and "unexpected keys" in msg and "mis-shaped keys" in msg
    assert "(keys under decoder.estimator.)" in msg


def test_convert_without_estimator_or_encoder_keys():
    state = _small_state()
    with pytest.raises(StateDictError, match=r"missing keys decoder\.estimator\.\* \(no estimator\)"):
        convert_flow({k: v for k, v in state.items() if not k.startswith("decoder.")}, static_chunk_size=5, preset="cosyvoice2")
    with pytest.raises(StateDictError, match=r"encoder\.embed\.out\.0\.weight \(needed to infer sizes\)"):
        convert_flow({k: v for k, v in state.items() if not k.startswith("encoder.")}, decoder_heads=4, preset="cosyvoice2")


def test_checkpoint_round_trip_loads_without_torch(tmp_path):
    config, params = convert_flow(SMALL, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    path = save_flow_checkpoint(tmp_path / "ckpt", config, params)
    loaded_config, loaded = load_flow_checkpoint(path)
    assert loaded_config == config
    assert _same(loaded, params)
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        save_flow_checkpoint(path, config, params)
    other = jax.tree_util.tree_map(lambda a: a + 1.0, params)
    save_flow_checkpoint(path, config, other, overwrite=True)
    assert _same(load_flow_checkpoint(path)[1], other)
    script = (
        "import sys; from fmjax.convert.flow import load_flow_checkpoint; "
        f"c, p = load_flow_checkpoint({str(path)!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(c.chunk_size)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "5"


def test_config_json_round_trip_and_errors(tmp_path):
    config = dataclasses.replace(Token2MelConfig(), vocab_size=7)
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(ValueError, match="unknown class 'Nope'"):
        config_from_dict({"class": "Nope"})
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        config_from_dict({**config_to_dict(config), "bogus": 1})
    with pytest.raises(FileNotFoundError, match="not an fmjax flow checkpoint"):
        load_flow_checkpoint(tmp_path)


@pytest.mark.torch
def test_convert_from_torch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "flow.pt"
    torch.save({k: torch.from_numpy(v) for k, v in _small_state().items()}, path)
    a = convert_flow(path, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    b = convert_flow(SMALL, static_chunk_size=5, decoder_heads=4, preset="cosyvoice2")
    assert a[0] == b[0] and _same(a[1], b[1])


YAML = """# a CosyVoice2-style config (hyperpyyaml tags)
sample_rate: 24000
token_mel_ratio: 2
chunk_size: 5
num_decoding_left_chunks: -1
flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            num_heads: 4
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    upsample_rates: [8, 5, 3]
    istft_params:
        n_fft: 16
        hop_len: 4
"""


def test_settings_shapes_cannot_tell_are_never_guessed(tmp_path):
    """The head count, chunk and left chunks are not in the tensors: without them (or a YAML / preset) the converter
    raises naming each argument; given by argument, YAML or preset, the result is the same converted model."""
    with pytest.raises(ValueError, match=r"convert_flow: .*decoder_heads: not stored in the state dict"):
        convert_flow(SMALL, static_chunk_size=5, num_left_chunks=-1)
    with pytest.raises(ValueError, match=r"static_chunk_size: not stored.*num_left_chunks: not stored"):
        convert_flow(SMALL, decoder_heads=4)
    given, p_given = convert_flow(SMALL, static_chunk_size=5, num_left_chunks=-1, decoder_heads=4)
    (tmp_path / "cosyvoice2.yaml").write_text(YAML)
    from_yaml, p_yaml = convert_flow(SMALL, cosyvoice_yaml=tmp_path / "cosyvoice2.yaml")
    assert given == from_yaml and given.estimator.num_heads == 4 and given.chunk_size == 5
    np.testing.assert_array_equal(p_given["params"]["decoder"]["mid_0"]["tf_0"]["attn1"]["to_q"]["kernel"],
                                  p_yaml["params"]["decoder"]["mid_0"]["tf_0"]["attn1"]["to_q"]["kernel"])
    # the released model's values: the preset (the 4 heads of the small fixture then give another head width)
    released, _ = convert_flow(SMALL, preset="cosyvoice2")
    assert (released.estimator.num_heads, released.chunk_size) == (8, 25)
    with pytest.raises(ValueError, match="preset: expected one of"):
        convert_flow(SMALL, preset="cosyvoice9")
    with pytest.raises(FileNotFoundError, match="cosyvoice_yaml: cannot read"):
        convert_flow(SMALL, cosyvoice_yaml=tmp_path / "missing.yaml")
