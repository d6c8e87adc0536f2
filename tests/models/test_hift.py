"""HiFT generator: parity with the torch fixture (hift_infer.npz), the sine generators, the API and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.convert.hift import convert_hift
from fmjax.models.hift import HiFTConfig, HiFTGenerator, hift_decode, hift_inference, init_hift
from fmjax.models.hift_source import draw_sine_noise, sinegen, sinegen2

AUX_3D = ["s_stft", "conv_pre", "ups0", "ups1", "ups2", "source_downs0", "source_downs1", "source_downs2",
          "source_resblocks0", "source_resblocks1", "source_resblocks2", "conv_post"]


@pytest.fixture
def small(fixture):
    cfg, params = convert_hift(fixture("hift_small_state_dict.npz"), preset="cosyvoice2")
    assert cfg == HiFTConfig.small()
    return cfg, params, fixture("hift_infer.npz")


def _apply(cfg, params, *args, **kw):
    return jax.jit(lambda p, *a: HiFTGenerator(cfg).apply(p, *a, **kw))(params, *args)


def test_hift_full_chain_matches_torch(small):
    cfg, params, d = small
    mel = d["in/mel"].transpose(0, 2, 1)  # [b, t, m]
    wav, source, aux = _apply(cfg, params, mel, d["draw/sine_noise"])
    np.testing.assert_allclose(np.asarray(wav), d["out/wav"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(source), d["out/source"][:, 0], atol=1e-4, rtol=0)
    # f0 goes through five convs: float noise, relative to the 265 Hz peak.
    np.testing.assert_allclose(np.asarray(aux["f0"]), d["aux/f0"], atol=1e-5 * np.abs(d["aux/f0"]).max(), rtol=0)


def test_hift_sinegen2_source_matches_torch(small):
    """With the recorded f0 and noise, the source is the torch one to float rounding."""
    cfg, params, d = small
    # Under jit, as the library runs it: XLA then contracts a·b + c into an FMA like torch's CPU kernels do.
    gen = jax.jit(lambda f0, noise: sinegen2(f0, noise, sampling_rate=24000, upsample=480))
    waves = gen(jnp.asarray(d["aux/f0"]), jnp.asarray(d["draw/sine_noise"]))
    w = params["params"]["m_source"]["l_linear"]
    source = np.tanh(np.asarray(waves) @ w["kernel"] + w["bias"])[..., 0]
    np.testing.assert_allclose(source, d["out/source"][:, 0], atol=1e-6, rtol=0)


def test_hift_decode_stages_match_torch(small):
    cfg, params, d = small
    mel = d["in/mel"].transpose(0, 2, 1)
    wav, _, aux = _apply(cfg, params, mel, source=jnp.asarray(d["out/source"][:, 0]))
    for name in AUX_3D:
        np.testing.assert_allclose(
            np.asarray(aux[name]), d[f"aux/{name}"].transpose(0, 2, 1), atol=1e-4, rtol=0, err_msg=name
        )
    np.testing.assert_allclose(np.asarray(wav), d["out/wav"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(hift_decode(cfg, params, mel, d["out/source"][:, 0])), d["out/wav"],
                               atol=1e-4, rtol=0)


def test_hift_inference_api(small):
    cfg, params, d = small
    mel = jnp.asarray(d["in/mel"].transpose(0, 2, 1))
    wav, source = hift_inference(cfg, params, mel, sine_noise=d["draw/sine_noise"])
    np.testing.assert_allclose(np.asarray(wav), d["out/wav"], atol=1e-4, rtol=0)
    key = jax.random.key(3)
    w1, s1 = hift_inference(cfg, params, mel, key=key)
    w2, _ = hift_inference(cfg, params, mel, key=key)
    w3, _ = hift_inference(cfg, params, mel, key=jax.random.key(4))
    assert w1.shape == (1, 24 * 480) and s1.shape == (1, 24 * 480)
    np.testing.assert_array_equal(np.asarray(w1), np.asarray(w2))
    assert np.abs(np.asarray(w1) - np.asarray(w3)).max() > 1e-3  # the noise matters
    # cache_source overwrites the first S source samples
    prefix = jnp.full((1, 960), 0.5)
    _, s4 = hift_inference(cfg, params, mel, key=key, cache_source=prefix)
    np.testing.assert_array_equal(np.asarray(s4[:, :960]), 0.5)
    np.testing.assert_array_equal(np.asarray(s4[:, 960:]), np.asarray(s1[:, 960:]))


def test_hift_noise_is_fixed_by_frame_position():
    key = jax.random.key(0)
    draw = jax.jit(draw_sine_noise, static_argnums=(1, 2, 3, 4))
    full = draw(key, 2, 7, 6, 3)
    part = draw(key, 2, 3, 6, 3, start_frame=jnp.int32(4))
    assert full.shape == (2, 42, 3)
    np.testing.assert_array_equal(np.asarray(part), np.asarray(full[:, 24:]))
    assert not np.array_equal(np.asarray(full[0]), np.asarray(full[1]))  # rows draw independently


def test_sinegen_matches_formula_on_hand_computed_f0():
    """SineGen: sine_amp·sin(2π·frac(Σ_{m<=n} f0[m]·(i+1)/sr) + φ_i)·uv + noise_amp·noise, 4 samples per frame."""
    f0 = jnp.asarray([[100.0, 250.0, 5.0]])  # Hz; the last frame is unvoiced (<= 10 Hz)
    phi = jnp.asarray([[0.0, 0.5]])
    noise = jnp.ones((1, 12, 2))
    got = np.asarray(jax.jit(lambda *a: sinegen(*a, sampling_rate=1000, upsample=4))(f0, noise, phi))
    # cumulative cycles of the fundamental: 0.1, 0.2, 0.3, 0.4 | 0.65, 0.9, 1.15, 1.4; the 2nd harmonic doubles them
    cyc = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.9, 1.15, 1.4])
    for i, p in enumerate([0.0, 0.5]):
        want = 0.1 * np.sin(2 * np.pi * ((cyc * (i + 1)) % 1) + p) + 0.003
        np.testing.assert_allclose(got[0, :8, i], want, atol=1e-6)
    np.testing.assert_allclose(got[0, 8:], 0.1 / 3, atol=1e-7)  # unvoiced: noise only, std sine_amp / 3


def test_hift_sinegen_source_shapes_and_determinism(small):
    _, params, d = small
    cfg = HiFTConfig(base_channels=32, f0_channels=32, source="sinegen")
    mel = jnp.asarray(d["in/mel"].transpose(0, 2, 1)[:, :6])
    w1, s1 = hift_inference(cfg, params, mel, key=jax.random.key(0))
    w2, s2 = hift_inference(cfg, params, mel, key=jax.random.key(0))
    assert w1.shape == s1.shape == (1, 6 * 480)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
    noise = jnp.zeros((1, 6 * 480, 9))
    _, a = hift_inference(cfg, params, mel, sine_noise=noise, initial_phase=jnp.zeros((1, 9)))
    _, b = hift_inference(cfg, params, mel, sine_noise=noise, initial_phase=jnp.full((1, 9), 1.0).at[:, 0].set(0))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3  # SineGen's initial phases matter


def test_hift_bad_input(small):
    cfg, params, d = small
    mel = np.asarray(d["in/mel"].transpose(0, 2, 1))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"mel: expected shape \[b, t, 80\]"):
        hift_inference(cfg, params, mel[..., :79], key=key)
    with pytest.raises(ValueError, match="mel: expected shape"):
        hift_inference(cfg, params, mel[0], key=key)
    with pytest.raises(ValueError, match="mel: contains NaN"):
        hift_inference(cfg, params, np.where(np.arange(80) == 3, np.nan, mel).astype(np.float32), key=key)
    with pytest.raises(TypeError, match="mel: expected a floating dtype"):
        hift_inference(cfg, params, mel.astype(np.int32), key=key)
    with pytest.raises(ValueError, match="at least one example and one frame"):
        hift_inference(cfg, params, mel[:, :0], key=key)
    with pytest.raises(ValueError, match="exactly one"):
        hift_inference(cfg, params, mel)
    with pytest.raises(ValueError, match="sine_noise: expected shape"):
        hift_inference(cfg, params, mel, sine_noise=np.zeros((1, 100, 9), np.float32))
    with pytest.raises(ValueError, match="source: expected shape"):
        hift_decode(cfg, params, mel, np.zeros((1, 100), np.float32))
    with pytest.raises(ValueError, match="source: expected one of"):
        HiFTConfig(source="sinegen3")


def test_hift_init_matches_converted_tree(small):
    cfg, params, _ = small
    fresh = init_hift(cfg, seed=0)
    assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(params)):
        assert a.shape == b.shape
