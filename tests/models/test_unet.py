"""Matcha/CosyVoice1 U-Net without torch: shapes, jit == eager, masking, batch independence, bad input.

Torch parity lives in ``test_unet_torch.py``.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.models.unet import ConditionalDecoder, UNetConfig

TINY = UNetConfig(mel_dim=8, mu_dim=8, spk_dim=4, cond_dim=8, channels=(16, 32), n_blocks=1, num_mid_blocks=2,
                  num_heads=2, head_dim=8)
COSY = dataclasses.replace(TINY, attention_mask="key_padding", crop_upsampled=True, activation="gelu")
SMALL = dataclasses.replace(TINY, spk_dim=0, cond_dim=0, channels=(16,), num_mid_blocks=1)  # Matcha, 1 speaker


def tiny_inputs(cfg=TINY, b=2, t=12, lengths=(12, 7), key=0):
    ks = jax.random.split(jax.random.key(key), 5)
    mask = (jnp.arange(t)[None] < jnp.array(lengths)[:, None]).astype(jnp.float32)
    cond = MelCond(jax.random.normal(ks[1], (b, t, cfg.mu_dim)) * mask[..., None],
                   jax.random.normal(ks[2], (b, cfg.spk_dim)),
                   jax.random.normal(ks[3], (b, t, cfg.cond_dim)) * mask[..., None], mask)
    return jax.random.normal(ks[0], (b, t, cfg.mel_dim)), cond, jax.random.uniform(ks[4], (b,))


@functools.cache
def tiny_params(cfg=TINY, seed=1):
    """Random params from shapes only (no compile): kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1²),
    biases and snake-beta's log-scale alpha/beta ~ N(0, 0.1²)."""
    x, cond, t = tiny_inputs(cfg)
    shapes = jax.eval_shape(ConditionalDecoder(cfg).init, jax.random.key(0), x, cond, t)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        shape = leaf.shape[1:] if "mid" in names else leaf.shape  # stacked mid stages: per-stage shape
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if names[-1] == "kernel":
            return jnp.asarray(z / np.sqrt(np.prod(shape[:-1])))
        return jnp.asarray((1.0 if names[-1] == "scale" else 0.0) + 0.1 * z)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def jitted(cfg):
    """One compiled forward per config, shared by the tests."""
    return jax.jit(ConditionalDecoder(cfg).apply)


def test_unet_shapes_and_aux():
    x, cond, t = tiny_inputs()
    v, cache, aux = jax.jit(functools.partial(ConditionalDecoder(TINY).apply, return_aux=True))(tiny_params(), x, cond, t)
    assert cache is None
    assert v.shape == (2, 12, 8) and v.dtype == jnp.float32
    expected = {"t_emb": (2, 64), "final_block": (2, 12, 16)}
    for prefix, n, d in (("down0", 12, 16), ("down1", 6, 32), ("mid0", 6, 32), ("mid1", 6, 32), ("up0", 6, 16),
                         ("up1", 12, 16)):
        expected.update({f"{prefix}.resnet": (2, n, d), f"{prefix}.tf0": (2, n, d)})
    expected.update({"down0.resample": (2, 6, 16), "down1.resample": (2, 6, 32), "up0.resample": (2, 12, 16),
                     "up1.resample": (2, 12, 16)})
    assert {k: a.shape for k, a in aux.items()} == expected
    params = tiny_params()["params"]
    assert params["mid"]["resnet"]["time_proj"]["kernel"].shape == (2, 64, 32)  # stacked mid stages
    assert params["up_0"]["resnet"]["block1"]["conv"]["kernel"].shape == (3, 64, 16)  # [h | skip] of 2·32
    assert params["upsample_0"]["conv"]["kernel"].shape == (4, 16, 16)  # ConvTranspose at a level change
    assert params["upsample_1"]["kernel"].shape == (3, 16, 16)  # plain conv at the top


def test_unet_jit_matches_eager():
    x, cond, t = tiny_inputs(SMALL)
    params = tiny_params(SMALL)
    eager, _ = ConditionalDecoder(SMALL).apply(params, x, cond, t)
    np.testing.assert_allclose(np.asarray(jitted(SMALL)(params, x, cond, t)[0]), np.asarray(eager), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg,t", [(TINY, 12), (COSY, 11)], ids=["matcha", "cosyvoice"])
def test_unet_padded_frames_do_not_affect_valid_outputs(cfg, t):
    """Values at padded frames never reach the output (zero there); other examples never matter."""
    lengths = (t, 7)
    x, cond, tt = tiny_inputs(cfg, t=t, lengths=lengths)
    def apply(x, c, t):
        return jitted(cfg)(tiny_params(cfg), x, c, t)[0]

    v = np.asarray(apply(x, cond, tt))
    assert np.all(v[1, lengths[1]:] == 0.0) and np.abs(v[1, : lengths[1]]).min() > 0.0
    pad = (1.0 - cond.mask)[..., None]  # 1 at padded frames
    noise = jax.random.normal(jax.random.key(5), x.shape)
    garbage = MelCond(cond.mu + 3.0 * pad * noise, cond.spks, cond.prompt - 2.0 * pad, cond.mask)
    np.testing.assert_allclose(np.asarray(apply(x + 5.0 * pad * noise, garbage, tt)), v, rtol=0, atol=1e-6)
    # example 0 ignores example 1's values, time and length
    x2 = x.at[1].set(jax.random.normal(jax.random.key(9), x.shape[1:]))
    cond2 = cond._replace(mu=cond.mu.at[1].multiply(-1.0), mask=cond.mask.at[1].set(1.0))
    np.testing.assert_allclose(np.asarray(apply(x2, cond2, tt.at[1].set(0.9)))[0], v[0], rtol=0, atol=1e-5)


def test_unet_optional_inputs_may_be_none():
    """Matcha's single-speaker layout: zero-width spks and prompt, given as such or as None."""
    x, cond, t = tiny_inputs(SMALL)
    assert cond.spks.shape == (2, 0) and cond.prompt.shape == (2, 12, 0)
    v = jax.eval_shape(ConditionalDecoder(SMALL).apply, tiny_params(SMALL), x, cond._replace(spks=None, prompt=None), t)
    assert v[0].shape == x.shape
    with pytest.raises(ValueError, match=r"cond.spks: expected shape \(2, 0\)"):
        ConditionalDecoder(SMALL).apply(tiny_params(SMALL), x, cond._replace(spks=jnp.zeros((2, 4))), t)


def test_unet_bad_input():
    params = tiny_params()
    model = ConditionalDecoder(TINY)
    x, cond, t = tiny_inputs()
    cases = [
        ((x[..., :7], cond, t), ValueError, r"x: expected shape \[b, t, 8\]"),
        ((x, cond._replace(mu=cond.mu[..., :5]), t), ValueError, r"cond.mu: expected shape \(2, 12, 8\)"),
        ((x, cond._replace(spks=cond.spks[:, :3]), t), ValueError, r"cond.spks: expected shape \(2, 4\)"),
        ((x, cond._replace(spks=None), t), ValueError, "cond.spks"),
        ((x, cond._replace(prompt=cond.prompt[..., :4]), t), ValueError, r"cond.prompt: expected shape \(2, 12, 8\)"),
        ((x, cond._replace(mask=cond.mask[:1]), t), ValueError, "cond.mask"),
        ((x, cond, t[:1]), ValueError, r"t: expected shape \[2\]"),
        ((x, tuple(cond), t), TypeError, "MelCond"),
        ((x[:, :11], jax.tree_util.tree_map(lambda a: a[:, :11] if a.ndim > 1 and a.shape[1] == 12 else a, cond), t),
         ValueError, "x: 11 frames; a U-Net with 2 levels needs a multiple of 2"),
    ]
    for args, err, match in cases:
        with pytest.raises(err, match=match):
            model.apply(params, *args)


def test_unet_config_errors():
    cases = [
        (dict(channels=(16, 12)), "channels: expected a non-empty tuple of positive multiples of 8"),
        (dict(channels=()), "channels"),
        (dict(activation="relu"), "activation"),
        (dict(attention_mask="causal"), "attention_mask"),
        (dict(spk_dim=3), "in_channels .* even width"),
        (dict(num_mid_blocks=-1), "num_mid_blocks: expected an int >= 0"),
        (dict(n_blocks=0), "n_blocks: expected an int >= 1"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(TINY, **kwargs)
    with pytest.raises(TypeError, match="crop_upsampled"):
        dataclasses.replace(TINY, crop_upsampled=1)
    assert dataclasses.replace(TINY, channels=[16, 32]).channels == (16, 32)  # lists are stored as tuples
    assert UNetConfig.cosyvoice1().in_channels == 320 and UNetConfig().in_channels == 160
