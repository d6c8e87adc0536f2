"""CosyVoice3 DiT: torch-fixture parity per stage, rotary semantics, batch invariance, causality, bad input,
full size."""

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.convert.common import count_parameters
from fmjax.convert.dit import convert_dit
from fmjax.models.dit import DiT, DiTConfig
from fmjax.nn.embeddings import TimestepEmbedding
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.rotary import apply_rotary, rotary_angles, rotary_inv_freq

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
# inner width 16 != dim 32 and 2 heads (rotary on head 0 only); a 7-tap conv spans several chunks
TINY = DiTConfig(dim=32, depth=2, heads=2, dim_head=8, ff_mult=2, mel_dim=8, mu_dim=6, spk_dim=4, chunk_size=4,
                 num_left_chunks=-1, conv_pos_kernel=7, conv_pos_groups=4)
# fixture stages compared at 1e-5 (all (B, T, C) or (B, C) already); t_freq is checked separately below
STAGES = ["t_emb", "packed_input", "input_proj", "conv_pos", "input_embed", "block0.q", "block0.k", "block0.v",
          "block0.q_rope", "block0.k_rope", "norm_out.mod", "norm_out"]
STAGES += [f"block{i}{s}" for i in range(2) for s in (".mod", ".attn_norm", ".attn", ".ff", "")]


def _tl(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 1))


def tiny_inputs(b=2, t=23, lengths=(23, 17), key=0, cfg=TINY):
    """Noise at every frame (as the CFM's), mu/prompt zero at padded frames, random spks and t (numpy draws, so
    that no eager JAX op compiles)."""
    rng = np.random.default_rng(key)
    mask = (np.arange(t)[None] < np.array(lengths)[:, None]).astype(np.float32)
    normal = functools.partial(rng.standard_normal, dtype=np.float32)
    cond = MelCond(jnp.asarray(normal((b, t, cfg.mu_dim)) * mask[..., None]), jnp.asarray(normal((b, cfg.spk_dim))),
                   jnp.asarray(normal((b, t, cfg.mel_dim)) * mask[..., None]), jnp.asarray(mask))
    return jnp.asarray(normal((b, t, cfg.mel_dim))), cond, jnp.asarray(rng.uniform(size=b).astype(np.float32))


@functools.cache
def tiny_params(cfg=TINY, seed=1):
    """Random params (shapes from ``eval_shape``, so nothing compiles): kernels ~ N(0, 1/fan_in), biases
    ~ N(0, 0.1²) (non-zero, so that dropping one would show; the adaLN gates are therefore non-zero too)."""
    x, cond, t = tiny_inputs(cfg=cfg, t=cfg.chunk_size, lengths=(cfg.chunk_size,) * 2)
    shapes = jax.eval_shape(DiT(cfg).init, jax.random.key(0), x, cond, t)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(k, "key", "") for k in path]
        shape = leaf.shape
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if names[-1] == "kernel":
            return jnp.asarray(z / np.sqrt(np.prod(shape[:-1])))
        return jnp.asarray(0.1 * z)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _fixture_model():
    return convert_dit(FIXTURES / "dit_small_state_dict.npz", chunk_size=10, preset="cosyvoice3")


def _fixture_call(f, streaming):
    cfg, params = _fixture_model()
    b = f["in/x"].shape[0]
    chunk = ChunkSpec.chunked(b, cfg.chunk_size) if streaming else None  # chunk masks as data
    cond = MelCond(_tl(f["in/mu"]), jnp.asarray(f["in/spks"]), _tl(f["in/cond"]), jnp.asarray(f["in/mask"][:, 0]),
                   chunk)
    apply = jax.jit(functools.partial(DiT(cfg).apply, return_aux=True))
    v, cache, aux = apply(params, _tl(f["in/x"]), cond, jnp.asarray(f["in/t"]))
    assert cache is None
    return v, aux


@pytest.mark.parametrize("name,streaming", [("dit_full.npz", False), ("dit_stream.npz", True)])
def test_dit_matches_cosyvoice3(fixture, name, streaming):
    f = fixture(name)
    v, aux = _fixture_call(f, streaming)
    # padded frames (item 1, frames 30..36) included: the original's output there is deterministic
    np.testing.assert_allclose(np.asarray(v), f["out/y"].transpose(0, 2, 1), rtol=0, atol=1e-5)
    for stage in STAGES:
        np.testing.assert_allclose(np.asarray(aux[stage]), f["aux/" + stage], rtol=0, atol=1e-5, err_msg=stage)
    np.testing.assert_array_equal(np.asarray(aux["attn_mask"]), f["aux/attn_mask"][:, 0])
    # t_freq: the recording machine's float32 torch.exp returned 5 of the 128 frequencies one ulp away from the
    # correctly rounded value, so sin/cos of arguments up to 750 rad differ by up to one ulp of the argument
    # (6.1e-5). Bound each entry by that ulp plus one ulp of the result (2^-23); the MLP on the fixture's own
    # features must match to 1e-5.
    cfg, params = _fixture_model()
    arg = np.float32(1000) * f["in/t"][:, None] * np.exp(-np.arange(128) * np.log(1e4) / 127).astype(np.float32)
    bound = np.spacing(np.concatenate([arg, arg], axis=1).astype(np.float32)) + 2.0**-23
    assert np.all(np.abs(np.asarray(aux["t_freq"]) - f["aux/t_freq"]) <= bound)
    t_emb = TimestepEmbedding(cfg.dim).apply({"params": params["params"]["time_embed"]}, f["aux/t_freq"])
    np.testing.assert_allclose(np.asarray(t_emb), f["aux/t_emb"], rtol=0, atol=1e-5)


def test_dit_rotary_matches_x_transformers(fixture):
    f = fixture("dit_full.npz")
    dim_head = 16
    np.testing.assert_array_equal(rotary_inv_freq(dim_head), f["aux/rope_inv_freq"])
    np.testing.assert_allclose(np.asarray(rotary_angles(f["aux/rope_pos"], dim_head)), f["aux/rope_freqs"][0],
                               rtol=0, atol=1e-6)
    q_rope = np.asarray(apply_rotary(jnp.asarray(f["aux/block0.q"]), jnp.arange(37), dim_head))
    np.testing.assert_allclose(q_rope, f["aux/block0.q_rope"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(q_rope[..., dim_head:], f["aux/block0.q"][..., dim_head:])  # heads 1..3 untouched
    assert np.abs(q_rope[..., :dim_head] - f["aux/block0.q"][..., :dim_head]).max() > 0.1


def test_dit_rotary_depends_on_relative_position_only():
    key_q, key_k = jax.random.split(jax.random.key(3))
    q = jax.random.normal(key_q, (1, 1, 24))
    k = jax.random.normal(key_k, (1, 1, 24))

    def score(p_q, p_k):  # first 12 rotated channels: depends on p_q - p_k only
        a = apply_rotary(q, jnp.array([p_q]), 12)[..., :12]
        b = apply_rotary(k, jnp.array([p_k]), 12)[..., :12]
        return float(jnp.sum(a * b))

    np.testing.assert_allclose(score(5, 2), score(1005, 1002), rtol=0, atol=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3


@pytest.mark.parametrize("streaming", [False, True])
def test_dit_batch_invariance(streaming):
    params = tiny_params()
    model = DiT(TINY)
    apply = jax.jit(lambda x, c, t: model.apply(params, x, c, t, streaming=streaming)[0])  # the deprecated alias
    x, cond, t = tiny_inputs(b=3, lengths=(23, 17, 9))
    v = np.asarray(apply(x, cond, t))
    # other rows: new content and other lengths (shorter and longer); row 1 must not change at any frame
    x2, cond2, t2 = tiny_inputs(b=3, lengths=(5, 17, 23), key=7)

    def mix(a, b):  # row 1 from a, rows 0 and 2 from b
        return jnp.asarray(np.concatenate([b[:1], a[1:2], b[2:]]))

    other = jax.tree_util.tree_map(mix, (x, cond, t), (x2, cond2, t2))
    np.testing.assert_allclose(np.asarray(apply(*other))[1], v[1], rtol=0, atol=1e-5)
    # valid frames never see what the padded frames hold
    x_junk = np.array(x)
    x_junk[1, 17:], x_junk[2, 9:] = 123.0, -50.0
    got = np.asarray(apply(x_junk, cond, t))
    np.testing.assert_allclose(got[1, :17], v[1, :17], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[2, :9], v[2, :9], rtol=0, atol=1e-5)
    assert np.abs(got[1, 17:] - v[1, 17:]).max() > 1.0  # while padded frames do (their output is not masked)


@pytest.mark.parametrize("left", [-1, 1])
def test_dit_chunk_causality(left):
    cfg = dataclasses.replace(TINY, num_left_chunks=left)
    params = tiny_params()
    model = DiT(cfg)
    x, cond, t = tiny_inputs(b=1, t=16, lengths=(16,))
    c, n_chunks = cfg.chunk_size, 4

    def velocity(x, mu, prompt):
        chunk = ChunkSpec.chunked(1, cfg.chunk_size, left)
        return model.apply(params, x, MelCond(mu, cond.spks, prompt, cond.mask, chunk), t)[0]

    @jax.jit
    def grads_per_chunk(x, mu, prompt):  # d(sum of chunk k outputs)/d inputs, for every k at once
        v, pullback = jax.vjp(velocity, x, mu, prompt)
        selectors = (jnp.arange(16)[None, :] // c == jnp.arange(n_chunks)[:, None]).astype(v.dtype)  # [k, t]
        return jax.vmap(lambda s: pullback(s[None, :, None] * jnp.ones_like(v)))(selectors)

    for g in grads_per_chunk(x, cond.mu, cond.prompt):  # x, mu, prompt: each [k, 1, t, ·]
        g = np.abs(np.asarray(g)).max(axis=(1, 3))  # [k, t]
        for k in range(n_chunks):
            assert np.all(g[k, (k + 1) * c:] == 0.0)  # later chunks: exactly zero
            assert np.all(g[k, :(k + 1) * c] > 0)  # every earlier frame matters (conv position embedding)


def test_dit_bad_input():
    params = tiny_params()
    model = DiT(TINY)
    x, cond, t = tiny_inputs(t=8, lengths=(8, 8))
    bad = {
        "cond.mu": cond._replace(mu=jnp.zeros((2, 8, 7))),
        "cond.spks": cond._replace(spks=jnp.zeros((2, 5))),
        "cond.prompt": cond._replace(prompt=jnp.zeros((2, 8, 6))),
        "cond.mask": cond._replace(mask=jnp.ones((2, 7))),
    }
    for name, c in bad.items():
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            model.apply(params, x, c, t)
    with pytest.raises(ValueError, match=r"x: expected shape \[b, t, 8\]"):
        model.apply(params, x[..., :7], cond, t)
    with pytest.raises(ValueError, match="t: expected shape"):
        model.apply(params, x, cond, t[:1])
    with pytest.raises(TypeError, match="MelCond"):
        model.apply(params, x, tuple(cond), t)
    with pytest.raises(TypeError, match="streaming"):
        model.apply(params, x, cond, t, streaming=1)
    with pytest.raises(ValueError, match="dim: expected a multiple of conv_pos_groups=16"):
        DiTConfig(dim=40)
    with pytest.raises(ValueError, match="dim_head: expected an even"):
        DiTConfig(dim_head=63)
    with pytest.raises(ValueError, match="num_left_chunks"):
        DiTConfig(num_left_chunks=-2)


def test_dit_full_size_parameter_count():
    x, cond, t = tiny_inputs(b=1, t=4, lengths=(4,), cfg=DiTConfig())
    shapes = jax.eval_shape(DiT(DiTConfig()).init, jax.random.key(0), x, cond, t)  # nothing is allocated
    assert count_parameters(shapes) == 331_142_224  # SPEC §8
    assert shapes["params"]["blocks_21"]["mod"]["kernel"].shape == (1024, 6144)
    assert "blocks_22" not in shapes["params"]


def test_dit_full_width_forward_and_stream():
    cfg = dataclasses.replace(DiTConfig(), depth=2)  # full widths, 2 of the 22 blocks
    params = tiny_params(cfg)
    model = DiT(cfg)
    x, cond, t = tiny_inputs(b=1, t=100, lengths=(93,), cfg=cfg)  # two chunks of 50, the second one padded
    chunked = cond._replace(chunk=ChunkSpec.chunked(1, cfg.chunk_size))
    v = jax.jit(lambda p, x, c, t: model.apply(p, x, c, t)[0])(params, x, chunked, t)  # parameters as arguments
    assert v.shape == (1, 100, 80) and bool(jnp.all(jnp.isfinite(v)))
    step = jax.jit(model.apply)
    cache = model.init_cache(1, 100)
    outs = []
    for s in (0, 50):
        chunk = jax.tree_util.tree_map(lambda a: a[:, s:s + 50] if a.ndim > 1 and a.shape[1] == 100 else a, (x, cond))
        out, cache = step(params, *chunk, t, cache)
        outs.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(v), rtol=0, atol=1e-5)
