"""flow.pt encoder converter: name/layout mapping, inferred config, full-size shapes, clear key errors."""

from __future__ import annotations

import ast

import jax
import numpy as np
import pytest

from fmjax.convert.common import StateDictError, count_parameters
from fmjax.convert.encoder import convert_encoder
from fmjax.models.encoder import EncoderConfig, TokenEmbedding, UpsampleConformerEncoder
from fmjax.nn.masks import ChunkSpec
from tests.conftest import FIXTURES

SMALL = FIXTURES / "flow_small_state_dict.npz"


def _small_state() -> dict[str, np.ndarray]:
    with np.load(SMALL) as f:
        return {k: f[k] for k in f.files}


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), tree)


def test_convert_encoder_small_fixture_config_and_layout():
    state = _small_state()
    conv = convert_encoder(SMALL, static_chunk_size=5, preset="cosyvoice2")
    assert conv.config == EncoderConfig(
        input_size=64, output_size=64, heads=2, linear_units=128, num_blocks=2, num_up_blocks=4,
        pre_lookahead_len=3, lookahead_channels=64, static_chunk_size=5, num_left_chunks=-1, upsample_stride=2,
    )
    model = UpsampleConformerEncoder(conv.config)
    init = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4, 64), np.float32))
    assert _shapes(conv.params) == _shapes(init)
    n_torch = sum(v.size for k, v in state.items() if k.startswith("encoder."))
    assert count_parameters(conv.params) == n_torch
    p = conv.params["params"]
    np.testing.assert_array_equal(p["embed"]["linear"]["kernel"], state["encoder.embed.out.0.weight"].T)
    conv1 = state["encoder.pre_lookahead_layer.conv1.weight"]  # (out, in, k)
    np.testing.assert_array_equal(p["pre_lookahead_layer"]["conv1"]["kernel"], conv1.transpose(2, 1, 0))
    np.testing.assert_array_equal(
        p["up_encoders_3"]["self_attn"]["pos_bias_v"], state["encoder.up_encoders.3.self_attn.pos_bias_v"]
    )
    np.testing.assert_array_equal(p["after_norm"]["scale"], state["encoder.after_norm.weight"])
    assert conv.vocab_size == 100
    np.testing.assert_array_equal(conv.token_params["params"]["embedding"], state["input_embedding.weight"])
    assert convert_encoder(state, token_embedding=None, preset="cosyvoice2").token_params is None


def _full_size_state(seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors with the shapes of CosyVoice2's flow.pt encoder and token embedding."""
    rng = np.random.default_rng(seed)
    state = {}
    for line in (FIXTURES / "state_dict_keys_flow.txt").read_text().splitlines():
        name, shape, _ = line.split("\t")
        if not (name.startswith("encoder.") or name == "input_embedding.weight"):
            continue
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


def test_convert_encoder_full_size_builds_and_runs():
    """The full-size shapes convert (37,831,168 encoder params), run offline and one streaming step; a single
    final step over a short stream equals the offline chunk-masked encoder."""
    conv = convert_encoder(_full_size_state(), preset="cosyvoice2")
    assert conv.config == EncoderConfig()
    assert count_parameters(conv.params) == 37_831_168
    assert conv.vocab_size == 6561
    tokens = np.array([[0, 17, 6560, 3000, 42, 7]])
    x = TokenEmbedding(conv.vocab_size, 512).apply(conv.token_params, tokens)  # [1, 6, 512]
    model = UpsampleConformerEncoder(conv.config)
    chunks = ChunkSpec.chunked(1, conv.config.static_chunk_size)
    offline, none = jax.jit(lambda p, x, c: model.apply(p, x, chunk=c))(conv.params, x, chunks)
    assert offline.shape == (1, 12, 512) and none is None
    assert np.isfinite(np.asarray(offline)).all()
    chunk = np.zeros((1, 25, 512), np.float32)
    chunk[:, :6] = x
    step = jax.jit(lambda p, x, n, c: model.apply(p, x, n, cache=c))
    h, cache = step(conv.params, chunk, np.array([6], np.int32), model.init_cache(1, 25))
    assert h.shape == (1, 50, 512)
    err = float(np.abs(np.asarray(h[:, :12]) - np.asarray(offline)).max())
    assert err < 1e-4, f"full-size streaming step vs offline: {err:.3g} (tol 1e-4)"
    assert np.asarray(cache.encoders[5].count).tolist() == [25] and cache.up_encoders[3].keys.shape == (1, 50, 8, 64)


def test_convert_encoder_names_missing_unexpected_and_misshaped_keys():
    state = _small_state()
    del state["encoder.encoders.1.norm_ff.bias"]
    state["encoder.encoders.0.self_attn.extra"] = np.zeros(3, np.float32)
    state["encoder.up_layer.conv.bias"] = np.zeros(65, np.float32)
    del state["input_embedding.weight"]
    with pytest.raises(StateDictError) as info:
        convert_encoder(state, preset="cosyvoice2")
    msg = str(info.value)
    assert "missing keys (2): encoder.encoders.1.norm_ff.bias (expected shape (64,)), input_embedding.weight" in msg
    assert "unexpected keys (1): encoder.encoders.0.self_attn.extra" in msg
    assert "mis-shaped keys (1): encoder.up_layer.conv.bias: expected shape (64,), got (65,)" in msg


def test_convert_encoder_missing_key_needed_for_sizes():
    state = _small_state()
    del state["encoder.embed.out.0.weight"]
    with pytest.raises(StateDictError, match=r"missing key encoder\.embed\.out\.0\.weight \(needed to infer sizes\)"):
        convert_encoder(state, preset="cosyvoice2")


def test_convert_encoder_ignores_other_flow_keys():
    """A whole flow state dict converts; only ``encoder.*`` and the token table are read."""
    state = _small_state()
    assert any(k.startswith("decoder.") for k in state)
    only = {k: v for k, v in state.items() if k.startswith("encoder.") or k == "input_embedding.weight"}
    a, b = convert_encoder(state, preset="cosyvoice2"), convert_encoder(only, preset="cosyvoice2")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a.params, b.params))


@pytest.mark.torch
def test_convert_encoder_from_torch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    state = _small_state()
    path = tmp_path / "flow.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    a, b = convert_encoder(path, static_chunk_size=5, preset="cosyvoice2"), convert_encoder(SMALL, static_chunk_size=5, preset="cosyvoice2")
    assert a.config == b.config
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a.params, b.params))
