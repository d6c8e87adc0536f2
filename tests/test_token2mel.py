"""Offline token2mel (prompt packing, batches, noise, grids/solvers, bad input) and the training loss (torch parity
on ``cfm_loss_full.npz``, padding ignored, unified chunk/full training in one compiled step)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.loss import LossDraws
from fmjax.noise import cosyvoice_noise
from fmjax.timesteps import time_grid
from fmjax.nn.masks import ChunkSpec
from fmjax.nn.tokens import frame_mask
from fmjax.pipelines.common import flow_condition
from fmjax.pipelines.token2mel import _token2mel
from fmjax.token2mel import COSYVOICE2_LOSS, UnifiedChunks, cfm_loss, flow_loss, pack_prompt, token2mel
from tests.conftest import load_fixture
from tests.models.test_flow import small, tiny_flow  # noqa: F401  (small is a fixture)

STEPS = 3  # ODE steps in the tiny tests


def _inputs(seed, b=2, n=4, p=3):
    """Random ids, speaker embeddings, prompt ids and prompt mel. Most tests use these shapes with totals
    ``P + N = 6`` per row, so that they share two compilations (batch 1 and 2)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 50, (b, n)), rng.standard_normal((b, 12)).astype(np.float32),
            rng.integers(0, 50, (b, p)), rng.standard_normal((b, 2 * p, 80)).astype(np.float32))


def _run(model, params, tokens, emb, prompt, pmel, lengths, plens, **kw):
    kw.setdefault("n_steps", STEPS)
    return token2mel(model, params, tokens, emb, lengths=np.asarray(lengths), prompt_tokens=prompt,
                     prompt_mel=pmel, prompt_lengths=np.asarray(plens), **kw)


def test_pack_prompt_per_row():
    tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    prompt = jnp.array([[9, 9, 9], [8, 8, 0]])
    seq, total = pack_prompt(tokens, jnp.array([4, 2]), prompt, jnp.array([3, 2]))
    assert np.asarray(seq).tolist() == [[9, 9, 9, 1, 2, 3, 4], [8, 8, 5, 6, 0, 0, 0]]
    assert np.asarray(total).tolist() == [7, 4]


def test_rows_with_different_prompt_lengths_equal_rows_alone():
    """Rows of equal total length (so no padding) but different prompt lengths: each equals the row alone."""
    model, params = tiny_flow()
    tokens, emb, prompt, pmel = _inputs(0)
    lengths, plens = [4, 3], [2, 3]
    batch = _run(model, params, tokens, emb, prompt, pmel, lengths, plens)
    np.testing.assert_array_equal(np.asarray(batch.lengths), [8, 6])
    for i in range(2):
        alone = _run(model, params, tokens[i : i + 1], emb[i : i + 1], prompt[i : i + 1], pmel[i : i + 1],
                     lengths[i : i + 1], plens[i : i + 1])
        got, n = np.asarray(batch.mel[i]), 2 * lengths[i]
        err = float(np.abs(got[:n] - np.asarray(alone.mel[0, :n])).max())
        assert err < 1e-5, f"row {i}: batched vs alone max abs error {err:.3g} (tol 1e-5)"
        assert not got[n:].any()  # zero past the row's length


def test_ragged_batch_ignores_padded_ids():
    """A ragged batch: the full-length row equals the row alone; ids at padded positions do not matter."""
    model, params = tiny_flow()
    tokens, emb, prompt, pmel = _inputs(1)
    lengths, plens = [4, 2], [2, 2]
    out = _run(model, params, tokens, emb, prompt, pmel, lengths, plens)
    other, other_prompt = tokens.copy(), prompt.copy()
    other[1, 2:], other_prompt[:, 2:] = 49, 0
    out2 = _run(model, params, other, emb, other_prompt, pmel, lengths, plens)
    np.testing.assert_array_equal(np.asarray(out.mel), np.asarray(out2.mel))
    alone = _run(model, params, tokens[:1], emb[:1], prompt[:1], pmel[:1], lengths[:1], plens[:1])
    err = float(np.abs(np.asarray(out.mel[0]) - np.asarray(alone.mel[0])).max())
    assert err < 1e-5, f"longest row vs alone: {err:.3g} (tol 1e-5)"
    assert out.mel.shape == (2, 8, 80) and not np.asarray(out.mel[1, 4:]).any()


def test_noise_defaults_to_cosyvoice_fixed_noise_by_absolute_frame():
    model, params = tiny_flow()
    tokens, emb, prompt, pmel = _inputs(2, b=1)
    args = (model, params, tokens, emb, prompt, pmel, [4], [2])
    default = _run(*args)
    given = _run(*args, noise=cosyvoice_noise(40))  # a longer table: its first 12 frames are used
    np.testing.assert_array_equal(np.asarray(given.mel), np.asarray(default.mel))
    shifted = _run(*args, noise=cosyvoice_noise(40, offset=1))
    assert float(np.abs(np.asarray(shifted.mel) - np.asarray(default.mel)).max()) > 1e-2
    keyed = _run(*args, key=jax.random.key(3))
    drawn = _run(*args, noise=jax.random.normal(jax.random.key(3), (1, 12, 80)))
    np.testing.assert_array_equal(np.asarray(keyed.mel), np.asarray(drawn.mel))


def test_grid_is_data_and_solvers_and_cfg_are_selectable():
    model, params = tiny_flow()
    tokens, emb, prompt, pmel = _inputs(3, b=1)
    args = (model, params, tokens, emb, prompt, pmel, [4], [2])
    cosine = _run(*args, grid="cosine")
    before = _token2mel._cache_size()
    linear = _run(*args, grid="linear")
    custom = _run(*args, grid=time_grid("linear", STEPS))
    assert _token2mel._cache_size() == before  # new grid values reuse the compiled sampler
    np.testing.assert_array_equal(np.asarray(custom.mel), np.asarray(linear.mel))
    assert float(np.abs(np.asarray(cosine.mel) - np.asarray(linear.mel)).max()) > 1e-3
    other = _run(*args, solver="midpoint", n_steps=2, cfg_weight=0.0, return_aux=True)
    assert other.aux["trajectory"].shape == (2, 1, 12, 80)
    assert float(np.abs(np.asarray(other.mel) - np.asarray(cosine.mel)).max()) > 1e-3


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tokens=np.array([[1, 50]])), ValueError, r"tokens: 1 id\(s\) outside the vocabulary \[0, 50\)"),
        (dict(tokens=np.array([[1.0, 2.0]])), TypeError, "tokens: expected integer ids"),
        (dict(tokens=np.array([1, 2])), ValueError, r"tokens: expected shape \[b, n\]"),
        (dict(lengths=np.array([3])), ValueError, r"lengths: expected values in \[1, 2\]"),
        (dict(prompt_tokens=np.array([[1, -1]]), prompt_mel=np.zeros((1, 4, 80))), ValueError,
         "prompt_tokens: 1 id"),
        (dict(prompt_tokens=np.array([[1, 2]]), prompt_mel=np.zeros((1, 3, 80))), ValueError,
         r"prompt_mel: expected shape \(1, 4, 80\)"),
        (dict(prompt_mel=np.zeros((1, 4, 80))), ValueError, "given without prompt_tokens"),
        (dict(embedding=np.zeros((1, 11), np.float32)), ValueError, r"embedding: expected .* \[1, 12\]"),
        (dict(noise=np.zeros((3, 80))), ValueError, r"noise: expected \[T >= 4, 80\]"),
        (dict(grid=np.array([0.0, 0.6, 0.5, 1.0])), ValueError, "grid: expected strictly increasing"),
        (dict(solver="adams"), ValueError, "solver: expected one of"),
    ],
)
def test_token2mel_bad_input(kwargs, error, match):
    model, params = tiny_flow()
    args = dict(tokens=np.array([[1, 2]]), embedding=np.ones((1, 12), np.float32))
    args.update(kwargs)
    tokens, embedding = args.pop("tokens"), args.pop("embedding")
    with pytest.raises(error, match=match):
        token2mel(model, params, tokens, embedding, **args)


# ------------------------------------------------------------------------------------------------------ loss
def test_cfm_loss_matches_torch_fixture(small):  # noqa: F811
    """``compute_loss`` with the recorded draws, the real (small) estimator and its ragged mask."""
    model, params = small
    f = load_fixture("cfm_loss_full.npz")
    t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    cond = MelCond(t(f["in/mu"]), f["in/spks"], t(f["in/cond"]), f["in/mask"][:, 0])
    draws = LossDraws(t=f["draw/t"].reshape(-1), z=t(f["draw/z"]), keep=f["draw/cfg_rand"] > 0.2)
    no_prompt = dataclasses.replace(COSYVOICE2_LOSS, prompt_prob=0.0)  # the fixture gives cond itself
    loss, aux = jax.jit(lambda p: cfm_loss(model, p, t(f["in/x1"]), cond, draws=draws, loss=no_prompt))(params)
    np.testing.assert_allclose(np.asarray(aux["x_t"]), t(f["est_in/y"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["target"]), t(f["aux/u_target"]), atol=1e-6)
    err = abs(float(loss) - float(f["out/loss"]))
    assert err < 1e-5, f"loss {float(loss):.7g} vs torch {float(f['out/loss']):.7g}: error {err:.3g} (tol 1e-5)"


def _batch(seed=4, lengths=(7, 4)):
    rng = np.random.default_rng(seed)
    b, u = len(lengths), max(lengths)
    mask = np.arange(u)[None, :] < np.array(lengths)[:, None]
    mel = rng.standard_normal((b, 2 * u, 80)).astype(np.float32) * np.repeat(mask, 2, axis=1)[..., None]
    return dict(tokens=rng.integers(0, 50, (b, u)) * mask, token_len=np.array(lengths, np.int32), mel=mel,
                spk=rng.standard_normal((b, 12)).astype(np.float32))


@pytest.fixture(scope="module")
def loss_and_grad():
    """``(model, params, fn)`` with ``fn(params, batch, key, chunk_prob) -> ((loss, aux), d loss / d mel)``,
    jitted once for the module (the chunk probability is traced)."""
    model, params = tiny_flow()

    def fn(params, batch, key, prob):
        def of_mel(mel):
            return flow_loss(model, params, dict(batch, mel=mel), key, chunk_prob=prob)

        return jax.value_and_grad(of_mel, has_aux=True)(batch["mel"])

    return model, params, jax.jit(fn)


def test_flow_loss_ignores_padding(loss_and_grad):
    model, params, fn = loss_and_grad
    batch, key = _batch(), jax.random.key(0)
    (loss, aux), grad = fn(params, batch, key, 0.5)
    noisy = dict(batch, mel=batch["mel"].copy(), tokens=batch["tokens"].copy())
    noisy["mel"][1, 8:] = 5.0  # padded frames of row 1
    noisy["tokens"][1, 4:] = 49
    (loss2, _), _ = fn(params, noisy, key, 0.5)
    assert abs(float(loss) - float(loss2)) < 1e-6, f"padding changed the loss: {float(loss)} vs {float(loss2)}"
    assert not np.asarray(grad[1, 8:]).any() and np.asarray(grad[1, :8]).any()
    np.testing.assert_array_equal(np.asarray(aux["weight"]), [1.0, 1.0])


def test_flow_loss_prior_term_is_the_encoder_mse_over_valid_frames():
    """``prior_weight`` adds w · mean over valid frames and bins of (mu − mel)² (Matcha-TTS's prior loss) to the
    same draws' CFM loss, with mu the encoder's output computed separately here (full context, chunk_prob 0);
    padded frames do not enter it (tol 1e-5 relative); bad weights raise before tracing."""
    model, params = tiny_flow()
    batch, key = _batch(), jax.random.key(3)

    @jax.jit
    def losses(params, batch):
        plain, _ = flow_loss(model, params, batch, key, chunk_prob=0.0)
        with_prior, aux = flow_loss(model, params, batch, key, chunk_prob=0.0, prior_weight=0.5)
        full = model.config.chunk_spec(jnp.zeros((2,), bool))
        mu = flow_condition(model, params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["token_len"]),
                            jnp.asarray(batch["spk"]), chunk=full).mu
        return plain, with_prior, aux["prior_loss"], mu

    plain, with_prior, prior, mu = losses(params, batch)
    frames = 2 * batch["token_len"]
    err = [np.asarray(mu[i, :n], np.float64) - batch["mel"][i, :n] for i, n in enumerate(frames)]
    expected = sum(float((e**2).sum()) for e in err) / (int(frames.sum()) * 80)
    assert abs(float(prior) - expected) < 1e-5 * expected, (float(prior), expected)
    assert abs(float(with_prior) - (float(plain) + 0.5 * expected)) < 1e-5 * float(with_prior)
    noisy = dict(batch, mel=batch["mel"].copy())
    noisy["mel"][1, frames[1]:] = 7.0  # the padded frames of row 1
    assert abs(float(losses(params, noisy)[2]) - float(prior)) < 1e-6 * float(prior)
    for bad in (-1.0, True, "1"):
        with pytest.raises(ValueError, match="prior_weight: expected a number >= 0"):
            flow_loss(model, params, batch, key, prior_weight=bad)


def test_flow_loss_unified_training_one_compilation(loss_and_grad):
    """One compiled step draws chunk masks or full context per row (about half each); chunk_prob 1 / 0 give exactly
    the chunk-masked / full-context losses of the same draws; a per-row mix gives each row its own mode's loss."""
    model, params, fn = loss_and_grad
    batch = _batch(5, (7, 7))
    shares = [float(fn(params, batch, jax.random.key(i), 0.5)[0][1]["chunk_masked"]) for i in range(24)]
    assert fn._cache_size() == 1
    assert 8 <= 2 * sum(shares) <= 40, f"chunk masks chosen for {2 * sum(shares)} of 48 rows"
    assert 0.5 in shares  # rows of one batch are drawn independently (a mixed batch occurs)
    key = jax.random.key(7)
    (chunked, aux_c), _ = fn(params, batch, key, 1.0)
    (full, aux_f), _ = fn(params, batch, key, 0.0)
    assert fn._cache_size() == 1  # the mode is data: no second program
    assert abs(float(chunked) - float(full)) > 1e-4  # the two mask kinds differ on these lengths
    _, key_loss = jax.random.split(key)

    @jax.jit
    def direct(params, batch, chunked_rows):
        spks = model.apply(params, batch["spk"], method="speaker")
        chunk = model.config.chunk_spec(chunked_rows)
        mu, _ = model.apply(params, batch["tokens"], batch["token_len"], chunk=chunk, method="encode")
        mask = frame_mask(batch["token_len"], *batch["tokens"].shape, 2)
        cond = MelCond(mu, spks, jnp.zeros_like(mu), mask, chunk.scaled(2))
        return cfm_loss(model, params, batch["mel"], cond, key_loss)

    for rows, got, aux in (((True, True), chunked, aux_c), ((False, False), full, aux_f)):
        ref, ref_aux = direct(params, batch, jnp.array(rows))
        assert abs(float(ref) - float(got)) < 1e-5, f"rows {rows}: {float(got)} vs direct {float(ref)} (tol 1e-5)"
        np.testing.assert_allclose(np.asarray(aux["per_example"]), np.asarray(ref_aux["per_example"]), atol=1e-5)
    # a mixed batch: each row's per-example loss is the one of its own mode
    _, mixed = direct(params, batch, jnp.array([True, False]))
    np.testing.assert_allclose(np.asarray(mixed["per_example"]),
                               [float(aux_c["per_example"][0]), float(aux_f["per_example"][1])], atol=1e-5)


def test_flow_loss_chunk_policies():
    """Per-batch unified draws and WeNet's dynamic chunks are data too (any chunk size per row)."""
    model, params = tiny_flow()
    batch = _batch(5, (7, 7))
    per_batch = UnifiedChunks(0.5, per_row=False)
    shares = {float(flow_loss(model, params, batch, jax.random.key(i), chunks=per_batch)[1]["chunk_masked"])
              for i in range(12)}
    assert shares == {0.0, 1.0}  # whole batches, never a mix
    from fmjax.token2mel import DynamicChunks

    sizes = np.concatenate([np.asarray(flow_loss(model, params, batch, jax.random.key(i),
                                                 chunks=DynamicChunks(max_chunk=3))[1]["chunk"]) for i in range(8)])
    assert set(sizes.tolist()) - {1, 2, 3, ChunkSpec.full(1).size[0].item()} == set()
    assert len(set(sizes.tolist())) >= 3
    with pytest.raises(TypeError, match="chunks"):
        flow_loss(model, params, batch, jax.random.key(0), chunks=0.5)


def test_flow_loss_bad_batch():
    model, params = tiny_flow()
    batch = _batch()
    with pytest.raises(ValueError, match=r"batch.mel: expected shape \(2, 14, 80\)"):
        flow_loss(model, params, dict(batch, mel=batch["mel"][:, :13]), jax.random.key(0))
    with pytest.raises(ValueError, match="batch: missing field 'spk'"):
        flow_loss(model, params, {k: v for k, v in batch.items() if k != "spk"}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"batch.spk: expected a speaker embedding of shape \[2, 12\]"):
        flow_loss(model, params, dict(batch, spk=batch["spk"][:, :3]), jax.random.key(0))
