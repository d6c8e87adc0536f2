"""U-Net conv blocks vs torch functional re-computations; causal blocks stream exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn.unet_blocks import Block1D, CausalBlock1D, Downsample1D, ResnetBlock1D, Upsample1D


def _normal(seed, shape):
    """Standard-normal test inputs from numpy (an eager ``jax.random.normal`` compiles a program per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _perturbed(params, key=7):
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(key)
    return jax.tree_util.tree_unflatten(tree, [p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype)
                                               for p in leaves])


def _inputs(d=8, t=13):
    x = _normal(0, (2, t, d))
    mask = (jnp.arange(t)[None] < jnp.array([t, 9])[:, None]).astype(jnp.float32)
    t_emb = _normal(2, (2, 12))
    return x, mask, t_emb


class _Torch:
    """Channel-first torch re-computation of the blocks from Flax params."""

    def __init__(self, torch):
        self.torch, self.F = torch, torch.nn.functional

    def t(self, a):
        return self.torch.tensor(np.asarray(a))

    def conv(self, x, p, pad, stride=1):  # x (B, C, T)
        return self.F.conv1d(x, self.t(p["kernel"]).permute(2, 1, 0), self.t(p["bias"]), stride=stride, padding=pad)

    def block(self, x, m, p, causal):
        x = x * m
        if causal:
            h = self.conv(self.F.pad(x, (2, 0)), p["conv"], 0)
            h = self.F.layer_norm(h.transpose(1, 2), (h.shape[1],), self.t(p["norm"]["scale"]), self.t(p["norm"]["bias"]),
                                  1e-5).transpose(1, 2)
        else:
            h = self.F.group_norm(self.conv(x, p["conv"], 1), 8, self.t(p["norm"]["scale"]), self.t(p["norm"]["bias"]),
                                  1e-5)
        return self.F.mish(h) * m

    def resnet(self, x, m, t_emb, p, causal):
        h = self.block(x, m, p["block1"], causal)
        h = h + self.F.linear(self.F.mish(self.t(t_emb)), self.t(p["time_proj"]["kernel"]).T,
                              self.t(p["time_proj"]["bias"]))[:, :, None]
        h = self.block(h, m, p["block2"], causal)
        return h + self.conv(x * m, p["res_conv"], 0)


def _cf(a):
    return np.asarray(a).transpose(0, 2, 1)


@pytest.mark.torch
@pytest.mark.parametrize("causal", [False, True])
def test_resnet_block_matches_torch(causal):
    ref = _Torch(pytest.importorskip("torch"))
    x, mask, t_emb = _inputs()
    mod = ResnetBlock1D(16, causal=causal)
    params = _perturbed(mod.init(jax.random.key(1), x, mask, t_emb))
    y, cache = jax.jit(mod.apply)(params, x, mask, t_emb)
    assert cache is None and y.shape == (2, 13, 16)
    expected = ref.resnet(ref.t(_cf(x)), ref.t(np.asarray(mask)[:, None]), t_emb, params["params"], causal)
    np.testing.assert_allclose(_cf(y), expected.numpy(), rtol=0, atol=1e-5)


@pytest.mark.torch
def test_down_and_upsample_match_torch():
    ref = _Torch(pytest.importorskip("torch"))
    x = _normal(0, (2, 13, 8))
    down, up = Downsample1D(8), Upsample1D(8)
    pd = _perturbed(down.init(jax.random.key(1), x))
    pu = _perturbed(up.init(jax.random.key(2), x))
    y = down.apply(pd, x)
    assert y.shape == (2, 7, 8)
    np.testing.assert_allclose(_cf(y), ref.conv(ref.t(_cf(x)), pd["params"]["conv"], 1, stride=2).numpy(), atol=1e-5)
    y = up.apply(pu, x)
    assert y.shape == (2, 26, 8)
    w = ref.t(pu["params"]["conv"]["kernel"]).permute(1, 2, 0)  # (in, out, k)
    expected = ref.F.conv_transpose1d(ref.t(_cf(x)), w, ref.t(pu["params"]["conv"]["bias"]), stride=2, padding=1)
    np.testing.assert_allclose(_cf(y), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_causal_resnet_streaming_equals_offline(chunk):
    x, mask, t_emb = _inputs(t=15)
    mod = ResnetBlock1D(16, causal=True)
    params = _perturbed(mod.init(jax.random.key(1), x, mask, t_emb))
    expected, _ = mod.apply(params, x, mask, t_emb)
    cache = mod.init_cache(2, 8)
    step = jax.jit(mod.apply)
    outs = []
    for s in range(0, 15, chunk):
        y, cache = step(params, x[:, s:s + chunk], mask[:, s:s + chunk], t_emb, cache)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), expected, rtol=0, atol=1e-5)


def test_resnet_output_is_not_remasked_but_blocks_are():
    x, mask, t_emb = _inputs()
    for mod in (ResnetBlock1D(16, causal=True), CausalBlock1D(16), Block1D(16)):
        args = (x, mask, t_emb) if isinstance(mod, ResnetBlock1D) else (x, mask)
        params = _perturbed(mod.init(jax.random.key(1), *args))
        y, _ = mod.apply(params, *args)
        pad = np.asarray(y[1, 9:])
        if isinstance(mod, ResnetBlock1D):  # the 1x1 res_conv bias reaches padded frames (as in torch)
            np.testing.assert_allclose(pad, np.broadcast_to(params["params"]["res_conv"]["bias"], pad.shape), atol=1e-6)
        else:
            assert np.all(pad == 0.0)


def test_non_causal_blocks_refuse_a_cache():
    x, mask, t_emb = _inputs()
    mod = ResnetBlock1D(16)
    with pytest.raises(ValueError, match="init_cache"):
        mod.init_cache(2, 8)
    params = mod.init(jax.random.key(1), x, mask, t_emb)
    with pytest.raises(ValueError, match="cache"):
        mod.apply(params, x, mask, t_emb, ResnetBlock1D(16, causal=True).init_cache(2, 8))
