"""CosyVoice2 estimator converter: config inference, prefixes, and errors naming the bad keys."""

import pathlib

import numpy as np
import pytest

from fmjax.convert.causal_unet import convert_causal_unet
from fmjax.convert.common import StateDictError, load_state_dict
from fmjax.models.causal_unet import CausalUNetConfig

SMALL = pathlib.Path(__file__).parents[1] / "fixtures" / "flow_small_state_dict.npz"


@pytest.fixture(scope="module")
def small_sd():
    return load_state_dict(SMALL, prefix="decoder.estimator.")


def test_convert_infers_the_small_config(small_sd):
    cfg, params = convert_causal_unet(SMALL, num_heads=4, chunk_size=10, preset="cosyvoice2")
    assert cfg == CausalUNetConfig(channels=64, n_blocks=1, num_mid_blocks=2, num_heads=4, head_dim=32,
                                   chunk_size=10)
    p = params["params"]
    assert p["mid_1"]["tf_0"]["attn1"]["to_q"]["kernel"].shape == (64, 128) and "mid_2" not in p
    np.testing.assert_array_equal(p["mid_1"]["tf_0"]["attn1"]["to_q"]["kernel"],
                                  small_sd["mid_blocks.1.1.0.attn1.to_q.weight"].T)
    np.testing.assert_array_equal(p["down"]["resnet"]["block1"]["conv"]["kernel"],
                                  small_sd["down_blocks.0.0.block1.block.0.weight"].transpose(2, 1, 0))
    np.testing.assert_array_equal(p["up_conv"]["bias"], small_sd["up_blocks.0.2.bias"])
    np.testing.assert_array_equal(p["final_block"]["norm"]["scale"], small_sd["final_block.block.2.weight"])


def test_convert_accepts_names_without_prefix(small_sd):
    _, with_prefix = convert_causal_unet(SMALL, num_heads=4, preset="cosyvoice2")
    _, without = convert_causal_unet(small_sd, num_heads=4, preset="cosyvoice2")
    np.testing.assert_array_equal(with_prefix["params"]["final_proj"]["kernel"], without["params"]["final_proj"]["kernel"])


def test_convert_names_every_bad_key(small_sd):
    sd = dict(small_sd)
    del sd["mid_blocks.1.1.0.norm3.bias"]
    sd["up_blocks.0.0.res_conv.weight"] = np.zeros((64, 100, 1), np.float32)
    sd["something.extra"] = np.zeros(3, np.float32)
    with pytest.raises(StateDictError) as e:
        convert_causal_unet(sd, num_heads=4, preset="cosyvoice2")
    msg = str(e.value)
    assert "missing keys (1): mid_blocks.1.1.0.norm3.bias (expected shape (64,))" in msg
    assert "up_blocks.0.0.res_conv.weight: expected shape (64, 128, 1), got (64, 100, 1)" in msg
    assert "unexpected keys (1): something.extra" in msg


def test_convert_errors_when_sizes_cannot_be_inferred(small_sd):
    sd = {k: v for k, v in small_sd.items() if k != "final_proj.weight"}
    with pytest.raises(StateDictError, match="final_proj.weight"):
        convert_causal_unet(sd, num_heads=4, preset="cosyvoice2")
    with pytest.raises(ValueError, match="num_heads=3"):
        convert_causal_unet(small_sd, num_heads=3, preset="cosyvoice2")
    with pytest.raises(ValueError, match="down_blocks.1"):
        convert_causal_unet({**small_sd, "down_blocks.1.0.mlp.1.bias": np.zeros(64, np.float32)}, num_heads=4, preset="cosyvoice2")
