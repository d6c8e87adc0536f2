"""DiT converter: the CosyVoice3 flow's estimator calls, config inference, layouts, full-size shapes, key errors."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.convert.common import StateDictError, count_parameters
from fmjax.convert.dit import convert_dit
from fmjax.models.dit import DiT, DiTConfig

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"


def torch_state_dict(cfg: DiTConfig, *, rng=None, base=10000.0) -> dict:
    """A state dict with the torch names and shapes of CosyVoice3's ``DiT`` (as its fixture README lists them),
    random when ``rng`` is given, else zero-stride zero views (nothing allocated)."""
    d, inner, ff = cfg.dim, cfg.heads * cfg.dim_head, cfg.ff_mult * cfg.dim

    def linear(name, n_in, n_out):
        return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}

    shapes = {**linear("time_embed.time_mlp.0", 256, d), **linear("time_embed.time_mlp.2", d, d),
              **linear("input_embed.proj", cfg.in_channels, d), **linear("norm_out.linear", d, 2 * d),
              **linear("proj_out", d, cfg.mel_dim)}
    for conv in ("conv1", "conv2"):
        name = f"input_embed.conv_pos_embed.{conv}.0"
        shapes.update({f"{name}.weight": (d, d // cfg.conv_pos_groups, cfg.conv_pos_kernel), f"{name}.bias": (d,)})
    for i in range(cfg.depth):
        p = f"transformer_blocks.{i}"
        shapes.update(linear(f"{p}.attn_norm.linear", d, 6 * d))
        for k in ("to_q", "to_k", "to_v"):
            shapes.update(linear(f"{p}.attn.{k}", d, inner))
        shapes.update({**linear(f"{p}.attn.to_out.0", inner, d), **linear(f"{p}.ff.ff.0.0", d, ff),
                       **linear(f"{p}.ff.ff.2", ff, d)})
    if rng is None:
        sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    else:
        sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    sd["rotary_embed.inv_freq"] = (1.0 / base ** (np.arange(0, cfg.dim_head, 2) / cfg.dim_head)).astype(np.float32)
    return sd


def test_dit_convert_flow_prefix_reproduces_every_estimator_call(fixture):
    """``decoder.estimator.*`` of the small CosyVoice3 flow: the 10 recorded CFG estimator calls of
    ``flow.inference`` (row 0 conditioned, row 1 with mu/spks/cond zeroed) reproduce ``est_out``."""
    cfg, params = convert_dit(FIXTURES / "cv3_flow_small_state_dict.npz", chunk_size=10, preset="cosyvoice3")
    assert cfg == DiTConfig(dim=64, depth=2, heads=4, dim_head=16, ff_mult=2, chunk_size=10)
    f = fixture("cv3_flow_infer_full.npz")
    mu, prompt = (jnp.asarray(f[k].transpose(0, 2, 1)) for k in ("aux/mu", "aux/cond"))
    spks, mask = jnp.asarray(f["aux/spks"]), jnp.asarray(f["aux/mask"][:, 0])
    cond = MelCond(mu, spks, prompt, mask)
    cond = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), cond, cond.null())  # the CFG pair
    velocity = jax.jit(lambda x, t: DiT(cfg).apply(params, x, cond, t)[0])
    for step in range(f["aux/est_in_x"].shape[0]):
        v = velocity(jnp.asarray(f["aux/est_in_x"][step].transpose(0, 2, 1)), jnp.asarray(f["aux/est_in_t"][step]))
        np.testing.assert_allclose(np.asarray(v), f["aux/est_out"][step].transpose(0, 2, 1), rtol=0, atol=1e-5,
                                   err_msg=f"ODE step {step}")


def test_dit_convert_infers_config_and_layouts():
    # inner 144 != dim 96, rotary width 24 (12 frequencies), ff_mult 3, mu 64 != mel, 3 blocks, 8 conv groups
    cfg = DiTConfig(dim=96, depth=3, heads=6, dim_head=24, ff_mult=3, mel_dim=80, mu_dim=64, spk_dim=48,
                    chunk_size=8, num_left_chunks=1, conv_pos_kernel=15, conv_pos_groups=8)
    sd = torch_state_dict(cfg, rng=np.random.default_rng(0))
    got, params = convert_dit({"decoder.estimator." + k: v for k, v in sd.items()} | {"decoder.other.w": np.ones(2)},
                              mu_dim=64, chunk_size=8, num_left_chunks=1, preset="cosyvoice3")
    assert got == cfg
    p = params["params"]
    np.testing.assert_array_equal(p["blocks_2"]["attn"]["to_q"]["kernel"], sd["transformer_blocks.2.attn.to_q.weight"].T)
    np.testing.assert_array_equal(p["blocks_1"]["mod"]["bias"], sd["transformer_blocks.1.attn_norm.linear.bias"])
    np.testing.assert_array_equal(p["blocks_0"]["ff"]["proj_out"]["kernel"], sd["transformer_blocks.0.ff.ff.2.weight"].T)
    np.testing.assert_array_equal(p["conv_pos"]["conv2"]["kernel"],
                                  sd["input_embed.conv_pos_embed.conv2.0.weight"].transpose(2, 1, 0))  # [k, in/g, out]
    np.testing.assert_array_equal(p["time_embed"]["linear_1"]["kernel"], sd["time_embed.time_mlp.0.weight"].T)
    shapes = jax.eval_shape(DiT(cfg).init, jax.random.key(0), jnp.zeros((1, 8, 80)),
                            MelCond(jnp.zeros((1, 8, 64)), jnp.zeros((1, 48)), jnp.zeros((1, 8, 80)), jnp.ones((1, 8))),
                            jnp.zeros(1))
    assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(lambda a: a.shape, shapes)
    assert count_parameters(params) == sum(v.size for k, v in sd.items() if k != "rotary_embed.inv_freq")


def test_dit_convert_full_size_shapes():
    cfg = DiTConfig(depth=2)  # full widths; 2 of the 22 blocks (the 22-block state dict is 1.3 GB)
    got, params = convert_dit(torch_state_dict(cfg), preset="cosyvoice3")
    assert got == cfg
    assert count_parameters(params) == 331_142_224 - 20 * 14_693_376  # SPEC §8 total minus 20 blocks


def test_dit_convert_names_bad_keys():
    cfg = DiTConfig(dim=32, depth=2, heads=2, dim_head=8, mel_dim=8, mu_dim=8, spk_dim=8, chunk_size=4)
    sd = torch_state_dict(cfg, rng=np.random.default_rng(1))
    broken = dict(sd)
    del broken["transformer_blocks.1.attn.to_k.bias"]
    broken["norm_out.linear.bias"] = np.zeros(63, np.float32)
    broken["long_skip_connection.weight"] = np.zeros((32, 64), np.float32)
    with pytest.raises(StateDictError) as e:
        convert_dit(broken, preset="cosyvoice3")
    msg = str(e.value)
    assert "missing keys (1): transformer_blocks.1.attn.to_k.bias (expected shape (16,))" in msg
    assert "norm_out.linear.bias: expected shape (64,), got (63,)" in msg
    assert "unexpected keys (1): long_skip_connection.weight" in msg

    with pytest.raises(StateDictError, match="cannot infer its sizes, missing keys \\(1\\): proj_out.weight"):
        convert_dit({k: v for k, v in sd.items() if k != "proj_out.weight"}, preset="cosyvoice3")
    with pytest.raises(StateDictError, match="rotary_embed.inv_freq is not 10000"):
        convert_dit(torch_state_dict(cfg, base=1e5), preset="cosyvoice3")
    with pytest.raises(ValueError, match="input width 32 cannot hold"):
        convert_dit(sd, mu_dim=20, preset="cosyvoice3")
    with pytest.raises(ValueError, match="no tensors found with prefix"):
        convert_dit({}, preset="cosyvoice3")
