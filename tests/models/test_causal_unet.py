"""CosyVoice2 causal U-Net: torch-fixture parity, batch invariance, causality, bad input, full size."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.convert.causal_unet import convert_causal_unet
from fmjax.convert.common import count_parameters
from fmjax.models.causal_unet import CausalConditionalDecoder, CausalUNetConfig
from fmjax.nn.masks import ChunkSpec

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
TINY = CausalUNetConfig(mel_dim=8, mu_dim=8, spk_dim=4, cond_dim=8, channels=16, n_blocks=2, num_mid_blocks=2,
                        num_heads=2, head_dim=8, chunk_size=4, num_left_chunks=-1)
# fixture aux name -> fmjax aux name; conv activations are (B, C, T) in the fixtures, transformer ones (B, T, C)
AUX = {"t_emb": "t_emb", "down0.resnet": "down.resnet", "down0.tf0": "down.tf0", "down0.downsample": "down_conv",
       "mid0.resnet": "mid0.resnet", "mid0.tf0": "mid0.tf0", "mid1.resnet": "mid1.resnet", "mid1.tf0": "mid1.tf0",
       "up0.resnet": "up.resnet", "up0.tf0": "up.tf0", "up0.upsample": "up_conv", "final_block": "final_block"}


def _tl(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 1))


def tiny_inputs(b=2, t=23, lengths=(23, 17), key=0, cfg=TINY):
    ks = jax.random.split(jax.random.key(key), 5)
    mask = (jnp.arange(t)[None] < jnp.array(lengths)[:, None]).astype(jnp.float32)
    cond = MelCond(jax.random.normal(ks[1], (b, t, cfg.mu_dim)) * mask[..., None],
                   jax.random.normal(ks[2], (b, cfg.spk_dim)),
                   jax.random.normal(ks[3], (b, t, cfg.cond_dim)) * mask[..., None], mask)
    return jax.random.normal(ks[0], (b, t, cfg.mel_dim)), cond, jax.random.uniform(ks[4], (b,))


@functools.cache
def tiny_params(cfg=TINY, seed=1):
    """Random params (shapes from ``eval_shape``, so nothing compiles): kernels ~ N(0, 1/fan_in), LayerNorm
    scales ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²) (non-zero, so that dropping one would show)."""
    x, cond, t = tiny_inputs(cfg=cfg)
    shapes = jax.eval_shape(CausalConditionalDecoder(cfg).init, jax.random.key(0), x, cond, t)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        shape = leaf.shape[1:] if "mid" in names else leaf.shape  # stacked mid stages: per-layer shape
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if names[-1] == "kernel":
            return jnp.asarray(z / np.sqrt(np.prod(shape[:-1])))
        return jnp.asarray((1.0 if names[-1] == "scale" else 0.0) + 0.1 * z)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name,streaming", [("est_full.npz", False), ("est_stream.npz", True)])
def test_causal_unet_matches_cosyvoice2(fixture, name, streaming):
    f = fixture(name)
    cfg, params = convert_causal_unet(FIXTURES / "flow_small_state_dict.npz", num_heads=4, chunk_size=10, preset="cosyvoice2")
    b = f["in/x"].shape[0]
    chunk = ChunkSpec.chunked(b, 10) if streaming else ChunkSpec.full(b)  # chunk masks as data
    cond = MelCond(_tl(f["in/mu"]), jnp.asarray(f["in/spks"]), _tl(f["in/cond"]), jnp.asarray(f["in/mask"][:, 0]),
                   chunk)
    apply = jax.jit(functools.partial(CausalConditionalDecoder(cfg).apply, return_aux=True))
    v, cache, aux = apply(params, _tl(f["in/x"]), cond, jnp.asarray(f["in/t"]))
    assert cache is None
    np.testing.assert_allclose(np.asarray(v), f["out/y"].transpose(0, 2, 1), rtol=0, atol=1e-4)
    # the deprecated static flag is an alias of the same data (and None = full context)
    old = CausalConditionalDecoder(cfg).apply(params, _tl(f["in/x"]), cond._replace(chunk=None), jnp.asarray(f["in/t"]),
                                              streaming=streaming)[0]
    np.testing.assert_allclose(np.asarray(old), np.asarray(v), rtol=0, atol=1e-5)
    for ref_name, name_ in AUX.items():
        ref = f["aux/" + ref_name]
        if ref.ndim == 3 and ".tf" not in ref_name:
            ref = ref.transpose(0, 2, 1)
        np.testing.assert_allclose(np.asarray(aux[name_]), ref, rtol=0, atol=1e-4, err_msg=name_)


@pytest.mark.parametrize("streaming", [False, True])
def test_causal_unet_batch_invariance(streaming):
    params = tiny_params()
    model = CausalConditionalDecoder(TINY)
    def apply(x, c, t):
        chunk = ChunkSpec.chunked(x.shape[0], TINY.chunk_size) if streaming else None
        return _apply(x, c._replace(chunk=chunk), t)

    _apply = jax.jit(lambda x, c, t: model.apply(params, x, c, t)[0])
    lengths = (23, 17, 9)
    x, cond, t = tiny_inputs(b=3, lengths=lengths)
    v = np.asarray(apply(x, cond, t))
    for i, n in enumerate(lengths):  # each example alone, padded as in the batch
        alone = np.asarray(apply(x[i : i + 1], jax.tree_util.tree_map(lambda a: a[i : i + 1], cond), t[i : i + 1]))
        np.testing.assert_allclose(v[i], alone[0], rtol=0, atol=1e-5)
        assert np.all(v[i, n:] == 0.0)
    # the shortest one without any padding
    n = lengths[2]
    trimmed = MelCond(cond.mu[2:, :n], cond.spks[2:], cond.prompt[2:, :n], cond.mask[2:, :n])
    np.testing.assert_allclose(np.asarray(apply(x[2:, :n], trimmed, t[2:]))[0], v[2, :n], rtol=0, atol=1e-5)
    # changing another example (values and length) leaves example 0 unchanged
    x2 = x.at[1:].set(jax.random.normal(jax.random.key(9), x[1:].shape))
    cond2 = cond._replace(mask=cond.mask.at[1].set(1.0))
    np.testing.assert_allclose(np.asarray(apply(x2, cond2, t))[0], v[0], rtol=0, atol=1e-5)


def test_causal_unet_mixed_chunk_rows_in_one_program():
    """Per-row chunk specs (chunked / full context / another chunk size) in one batch equal each row run with its
    own spec, and changing the spec values does not recompile (chunks are data)."""
    params = tiny_params()
    model = CausalConditionalDecoder(TINY)
    apply = jax.jit(lambda x, c, t: model.apply(params, x, c, t)[0])
    x, cond, t = tiny_inputs(b=3, lengths=(23, 17, 20))
    spec = ChunkSpec(jnp.array([4, 10**6, 3], jnp.int32), jnp.array([-1, -1, 1], jnp.int32))
    v = np.asarray(apply(x, cond._replace(chunk=spec), t))
    for i in range(3):
        row = jax.tree_util.tree_map(lambda a: a[i : i + 1], cond._replace(chunk=spec))
        np.testing.assert_allclose(np.asarray(apply(x[i : i + 1], row, t[i : i + 1]))[0], v[i], rtol=0, atol=1e-5)
    full = np.asarray(apply(x, cond._replace(chunk=ChunkSpec.full(3)), t))
    np.testing.assert_allclose(full[1], v[1], rtol=0, atol=1e-5)  # row 1 has full context either way
    assert np.abs(full[0] - v[0]).max() > 1e-3  # row 0's chunk mask does change it
    np.testing.assert_allclose(np.asarray(model.apply(params, x, cond, t)[0]), full, rtol=0, atol=1e-5)  # None = full
    assert apply._cache_size() == 2  # the batch of 3 and the single rows; new spec values reused both


def test_causal_unet_chunks_never_see_the_future():
    params = tiny_params()
    model = CausalConditionalDecoder(TINY)
    x, cond, t = tiny_inputs(lengths=(23, 23))
    c = TINY.chunk_size

    def chunk_sum(x, mu, prompt, weights):
        v, _ = model.apply(params, x, cond._replace(mu=mu, prompt=prompt, chunk=ChunkSpec.chunked(2, c)), t)
        return (v * weights[None, :, None]).sum()

    grad = jax.jit(jax.grad(chunk_sum, argnums=(0, 1, 2)))
    frames = jnp.arange(x.shape[1])
    for k in range(5):
        in_chunk = ((frames >= k * c) & (frames < (k + 1) * c)).astype(x.dtype)
        for g in grad(x, cond.mu, cond.prompt, in_chunk):
            g = np.abs(np.asarray(g)).sum(axis=(0, 2))  # per frame
            assert np.all(g[(k + 1) * c :] == 0.0), f"chunk {k} depends on later frames"
            assert np.all(g[k * c : (k + 1) * c] > 0.0)
    # without the chunk mask, attention does look ahead (so the test above can fail)
    forward = jax.jit(lambda x: model.apply(params, x, cond, t)[0][:, :c])
    assert np.abs(np.asarray(forward(x.at[:, -1].add(1.0)) - forward(x))).max() > 1e-3


def test_causal_unet_bad_input():
    params = tiny_params()
    model = CausalConditionalDecoder(TINY)
    x, cond, t = tiny_inputs()
    cases = [
        ((x[..., :7], cond, t), ValueError, "x: expected shape"),
        ((x, cond._replace(mu=cond.mu[..., :5]), t), ValueError, "cond.mu"),
        ((x, cond._replace(spks=cond.spks[:, :3]), t), ValueError, "cond.spks"),
        ((x, cond._replace(prompt=cond.prompt[:, :4]), t), ValueError, "cond.prompt"),
        ((x, cond._replace(mask=cond.mask[:1]), t), ValueError, "cond.mask"),
        ((x, cond, t[:1]), ValueError, "t: expected"),
        ((x, tuple(cond), t), TypeError, "MelCond"),
    ]
    for args, err, match in cases:
        with pytest.raises(err, match=match):
            model.apply(params, *args)
    with pytest.raises(TypeError, match="streaming"):
        model.apply(params, x, cond, t, streaming=1)
    bad_chunks = [
        (ChunkSpec(jnp.array([4], jnp.int32), jnp.array([-1, -1], jnp.int32)), ValueError, "cond.chunk.size"),
        (ChunkSpec(jnp.array([4.0, 4.0]), jnp.array([-1, -1], jnp.int32)), ValueError, "cond.chunk.size"),
        (ChunkSpec(jnp.array([0, 4], jnp.int32), jnp.array([-1, -1], jnp.int32)), ValueError, "cond.chunk.size"),
        (ChunkSpec(jnp.array([4, 4], jnp.int32), jnp.array([-2, -1], jnp.int32)), ValueError, "cond.chunk.left"),
        ((4, -1), TypeError, "cond.chunk"),
    ]
    for chunk, err, match in bad_chunks:
        with pytest.raises(err, match=match):
            model.apply(params, x, cond._replace(chunk=chunk), t)
    with pytest.raises(ValueError, match="streaming"):
        model.apply(params, x, cond._replace(chunk=ChunkSpec.full(2)), t, streaming=True)
    with pytest.raises(ValueError, match="activation"):
        CausalUNetConfig(activation="relu")
    with pytest.raises(ValueError, match="num_left_chunks"):
        CausalUNetConfig(num_left_chunks=-2)
    with pytest.raises(ValueError, match="channels"):
        CausalUNetConfig(channels=0)


def _random_full_state_dict():
    rng = np.random.default_rng(0)
    sd = {}
    for line in (FIXTURES / "state_dict_keys_flow.txt").read_text().splitlines():
        name, shape, _ = line.split("\t")
        if name.startswith("decoder.estimator."):
            shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
            sd[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    return sd


@pytest.mark.slow
def test_causal_unet_full_size_builds_and_streams():
    cfg, params = convert_causal_unet(_random_full_state_dict(), preset="cosyvoice2")
    assert cfg == CausalUNetConfig()
    assert count_parameters(params) == 71_302_480
    model = CausalConditionalDecoder(cfg)
    x, cond, t = tiny_inputs(b=1, t=60, lengths=(60,), cfg=cfg)
    cond = cond._replace(chunk=ChunkSpec.chunked(1, cfg.chunk_size))
    # parameters are arguments, not closed-over constants: 285 MB of constants in the program would double its
    # compile time and be written into the persistent compilation cache
    v, _ = jax.jit(model.apply)(params, x, cond, t)
    assert v.shape == (1, 60, 80) and bool(jnp.all(jnp.isfinite(v)))
    step = jax.jit(model.apply)
    cache = model.init_cache(1, 100)
    outs = []
    for s, e in ((0, 50), (50, 60)):  # a full chunk, then a partial one (padded inside the call)
        pad = ((0, 0), (0, 50 - (e - s)), (0, 0))
        c = MelCond(jnp.pad(cond.mu[:, s:e], pad), cond.spks, jnp.pad(cond.prompt[:, s:e], pad),
                    jnp.pad(cond.mask[:, s:e], pad[:2]))
        out, cache = step(params, jnp.pad(x[:, s:e], pad), c, t, cache)
        outs.append(out[:, : e - s])
    np.testing.assert_allclose(np.concatenate(outs, 1), v, rtol=0, atol=1e-4)
    assert step._cache_size() == 1
