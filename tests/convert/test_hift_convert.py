"""HiFT converter: weight-norm folding, naming variants, key validation, full-size shapes."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.convert.common import StateDictError
from fmjax.convert.hift import convert_hift, fold_weight_norm
from fmjax.models.hift import HiFTConfig, hift_inference

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
WN = ".parametrizations.weight.original"


def _flax_kernel(params, torch_name):
    """Flax kernel for a torch module name, e.g. ``resblocks.4.convs1.0`` -> params[...]["resblocks_4"]["convs1_0"]."""
    node = params["params"]
    parts = torch_name.split(".")
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i + 1].isdigit() and parts[i] != "condnet":
            node = node[f"{parts[i]}_{parts[i + 1]}"]
            i += 2
        elif parts[i] == "condnet":
            node = node[f"condnet_{parts[i + 1]}"]
            i += 2
        else:
            node = node[parts[i]]
            i += 1
    return np.asarray(node["kernel"])


def test_hift_convert_folds_weight_norm(fixture):
    sd = fixture("hift_small_state_dict.npz")
    eff = fixture("hift_small_effective_weights.npz")
    cfg, params = convert_hift(sd, preset="cosyvoice2")
    assert cfg == HiFTConfig.small()
    assert len(eff) == 82
    for name, w in eff.items():
        base = name[: -len(".weight")]
        got = _flax_kernel(params, base)
        want = w.transpose(2, 0, 1) if base.startswith("ups.") else w.transpose(2, 1, 0)
        # weight norm folded in float64 then rounded: within 2 float32 ulps of torch's float32 fold
        np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=1e-7, err_msg=name)
    # a transposed conv is normalised per *input* channel (dim 0 of torch's (in, out, k))
    g, v = sd[f"ups.0{WN}0"], sd[f"ups.0{WN}1"]
    np.testing.assert_allclose(np.linalg.norm(eff["ups.0.weight"].reshape(v.shape[0], -1), axis=1), np.abs(g[:, 0, 0]),
                               rtol=1e-5)


def test_hift_convert_accepts_old_weight_norm_names_and_folded_weights(fixture):
    sd = fixture("hift_small_state_dict.npz")
    _, ref = convert_hift(sd, preset="cosyvoice2")
    old = {k.replace(f"{WN}0", ".weight_g").replace(f"{WN}1", ".weight_v"): v for k, v in sd.items()}
    folded = {}
    for k, v in sd.items():
        if k.endswith(f"{WN}0"):
            continue
        if k.endswith(f"{WN}1"):
            base = k[: -len(f"{WN}1")]
            folded[base + ".weight"] = fold_weight_norm(sd[f"{base}{WN}0"], v)
        else:
            folded[k] = v
    for variant in (old, folded):
        _, params = convert_hift(variant, preset="cosyvoice2")
        for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(params)):
            np.testing.assert_array_equal(a, b)


def test_hift_convert_reports_every_bad_key(fixture):
    sd = dict(fixture("hift_small_state_dict.npz"))
    del sd["resblocks.3.convs2.1.bias"]
    sd["conv_post.bias"] = np.zeros(17, np.float32)
    sd["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(StateDictError) as err:
        convert_hift(sd, config=HiFTConfig.small())
    msg = str(err.value)
    assert "missing keys (1): resblocks.3.convs2.1.bias" in msg
    assert "conv_post.bias: expected shape (18,), got (17,)" in msg
    assert "unexpected keys (1): extra.weight" in msg
    with pytest.raises(StateDictError, match="does not look like a HiFTGenerator"):
        convert_hift({"foo.weight": np.zeros(2, np.float32)}, preset="cosyvoice2")


def test_hift_convert_infers_cosyvoice1_rates():
    """Shapes fix every rate but the first; samples_per_frame (256 for CosyVoice1) and the hop fix that one."""
    from fmjax.models.hift import param_shapes
    from fmjax.convert.hift import infer_hift_config

    cfg = HiFTConfig(upsample_rates=(8, 8), upsample_kernel_sizes=(16, 16), source_resblock_kernel_sizes=(7, 11),
                     source_resblock_dilations=((1, 3, 5),) * 2, sampling_rate=22050, source="sinegen")
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]:
        keys = [re.sub(r"_(\d+)$", r".\1", k.key) for k in path[1:]]
        shape = leaf.shape
        if keys[-1] == "kernel":
            keys[-1] = "weight"
            shape = shape[::-1] if len(shape) == 2 else (
                (shape[1], shape[2], shape[0]) if keys[0].startswith("ups.") else shape[::-1])
        shapes[".".join(keys)] = np.zeros(shape, np.float32)
    assert infer_hift_config(shapes, sampling_rate=22050, samples_per_frame=256) == cfg


def _random_full_state_dict():
    rng = np.random.default_rng(0)
    sd = {}
    for line in (FIXTURES / "state_dict_keys_hift.txt").read_text().splitlines():
        name, shape, _ = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        scale = 1.0 if name.endswith(("original0", "alpha")) else 1.0 / np.sqrt(np.prod(shape[1:]) or 1)
        sd[name] = (np.abs(rng.standard_normal(shape)) if name.endswith("original0") else
                    rng.standard_normal(shape) * scale).astype(np.float32)
    return sd


def test_hift_convert_full_size_loads_and_runs(tmp_path):
    sd = _random_full_state_dict()
    assert len(sd) == 328
    from safetensors.numpy import save_file

    save_file(sd, str(tmp_path / "hift.safetensors"))
    cfg, params = convert_hift(tmp_path / "hift.safetensors", preset="cosyvoice2")
    assert cfg == HiFTConfig()
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    assert n == 20_806_557  # SPEC §6: 20,821,295 stored minus 14,738 weight-norm g entries
    mel = jax.random.normal(jax.random.key(0), (1, 3, 80))
    wav, source = hift_inference(cfg, params, mel, key=jax.random.key(1))
    assert wav.shape == source.shape == (1, 3 * 480)
    assert bool(jnp.all(jnp.isfinite(wav))) and float(jnp.max(jnp.abs(wav))) <= np.float32(0.99)
