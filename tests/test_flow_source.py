"""The flow config's ODE source ``x0 = source_std · z + source_mu · mu`` (Grad-TTS's prior-centred source): offline,
streaming and the training loss each equal the default flow run on the shifted noise computed here from the
encoder's ``mu``; the stream still equals its offline twin; bad values, students and resumes of older runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.loss import LossDraws
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig
from fmjax.noise import cosyvoice_noise
from fmjax.pipelines.common import flow_condition, flow_source, has_default_source
from fmjax.pipelines.training import UnifiedChunks, flow_loss
from fmjax.token2mel import token2mel
from fmjax.token2mel_stream import Token2MelStream
from tests.models.test_flow import tiny_flow
from tests.test_token2mel_stream import _assert_rows_equal, _data, stream_all

MU, STD = 1.0, 0.5
STEPS = 3


def _centred(model, mu=MU, std=STD):
    return CosyVoice2Flow(dataclasses.replace(model.config, source_mu=mu, source_std=std))


def test_flow_source_arithmetic_and_default_is_the_noise_itself():
    noise = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 4)), jnp.float32)
    mu = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 4)), jnp.float32)
    default = Token2MelConfig()
    assert has_default_source(default) and flow_source(default, noise, mu) is noise  # the program is unchanged
    centred = dataclasses.replace(default, source_mu=MU, source_std=STD)
    assert not has_default_source(centred)
    np.testing.assert_allclose(np.asarray(flow_source(centred, noise, mu)),
                               STD * np.asarray(noise) + MU * np.asarray(mu), rtol=0, atol=1e-7)


@pytest.mark.parametrize("field, value", [("source_std", 0.0), ("source_std", -1.0), ("source_std", float("nan")),
                                          ("source_mu", float("inf")), ("source_mu", True), ("source_std", "1")])
def test_bad_source_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"Token2MelConfig.{field}: expected a finite number"):
        Token2MelConfig(**{field: value})


def test_offline_equals_the_default_flow_on_shifted_noise():
    """token2mel of the centred flow == token2mel of the same parameters with the default source, given the noise
    ``STD · N + MU · mu`` (``mu`` of the full-context encoder, computed here); tolerance 1e-5 abs."""
    model, params = tiny_flow(2)
    rng = np.random.default_rng(3)
    tokens, lengths = rng.integers(0, 50, (2, 7)), np.array([7, 5])
    emb = rng.standard_normal((2, 12)).astype(np.float32)
    noise = cosyvoice_noise(14, 80)
    mu = flow_condition(model, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths), jnp.asarray(emb)).mu
    shifted = STD * noise[None] + MU * np.asarray(mu)
    got = token2mel(_centred(model), params, tokens, emb, lengths=lengths, noise=noise, n_steps=STEPS)
    ref = token2mel(model, params, tokens, emb, lengths=lengths, noise=shifted, n_steps=STEPS)
    plain = token2mel(model, params, tokens, emb, lengths=lengths, noise=noise, n_steps=STEPS)
    err = float(np.abs(np.asarray(got.mel) - np.asarray(ref.mel)).max())
    assert err < 1e-5, f"centred source vs default flow on shifted noise: max abs error {err:.3g} (tol 1e-5)"
    assert float(np.abs(np.asarray(got.mel) - np.asarray(plain.mel)).max()) > 0.1  # the source does change it


def test_centred_stream_equals_its_offline_chunk_masked_twin():
    """As tests/test_token2mel_stream.py's C=2 case (prompts aligned, not, none; a final partial chunk), for a
    centred flow: the stream adds ``MU · mu`` of each chunk to its noise; tolerance 1e-4 abs."""
    model, params = tiny_flow(2)
    assert_stream_equals_offline(_centred(model), params, "centred source, C=2")


def assert_stream_equals_offline(model, params, what: str) -> None:
    """A C = 2 flow's stream (3 rows: prompts of 4, 5 and 0 tokens, 13 tokens in all, a final partial chunk) ==
    its offline chunk-masked twin; 1e-4 abs per row."""
    plens = np.array((4, 5, 0))
    lengths = 13 - plens
    tokens, emb, prompt, pmel = _data(2, 3, int(lengths.max()), int(plens.max()))
    offline = token2mel(model, params, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                        prompt_lengths=plens, streaming=True, n_steps=STEPS)
    stream = Token2MelStream(model, window_tokens=14, n_steps=STEPS)
    streamed, _ = stream_all(stream, stream.prepare_params(params), tokens, lengths, emb, prompt, pmel, plens)
    _assert_rows_equal(streamed, offline, lengths, what)


def test_loss_equals_the_default_flow_on_shifted_draws():
    """flow_loss of the centred flow (noise z from ``draws``) == flow_loss of the default flow given
    ``z' = STD · z + MU · mu`` (full context, the same key for t and the CFG/prompt draws); 1e-6 relative."""
    model, params = tiny_flow(2)
    rng = np.random.default_rng(5)
    tokens, token_len = rng.integers(0, 50, (2, 6)).astype(np.int32), np.array([6, 4], np.int32)
    batch = dict(tokens=tokens, token_len=token_len, mel=rng.standard_normal((2, 12, 80)).astype(np.float32),
                 spk=rng.standard_normal((2, 12)).astype(np.float32))
    z = rng.standard_normal((2, 12, 80)).astype(np.float32)
    key, full = jax.random.key(7), UnifiedChunks(0.0)
    mu = flow_condition(model, params, jnp.asarray(tokens), jnp.asarray(token_len), jnp.asarray(batch["spk"])).mu
    got, aux = flow_loss(_centred(model), params, batch, key, chunks=full, draws=LossDraws(z=z))
    ref, ref_aux = flow_loss(model, params, batch, key, chunks=full, draws=LossDraws(z=STD * z + MU * np.asarray(mu)))
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(aux["t"]), np.asarray(ref_aux["t"]))
    plain, _ = flow_loss(model, params, batch, key, chunks=full, draws=LossDraws(z=z))
    assert abs(float(plain) - float(got)) > 1e-3 * float(plain)
    # the source is differentiable in the encoder's parameters (Grad-TTS: the flow's loss trains the encoder too)
    grads = jax.grad(lambda p: flow_loss(_centred(model), p, batch, key, chunks=full, draws=LossDraws(z=z))[0])(params)
    enc = [float(jnp.abs(g).max()) for path, g in jax.tree_util.tree_leaves_with_path(grads)
           if "encoder_proj" in jax.tree_util.keystr(path)]
    assert enc and max(enc) > 0


def test_meanflow_and_reflow_students_train_from_a_centred_teachers_source(tmp_path):
    """A centred teacher's students keep its source (``student_config`` copies it) and their losses start from it:
    the meanflow experiment's per-example errors == its MeanFlow loss's on the draws ``STD · z + MU · mu`` computed here; the reflow
    experiment's loss on a coupling batch (``x0`` = the stored noise) == its CFM loss from ``STD · x0 + MU · mu``
    (1e-6 relative each, and both differ from the loss from pure noise by > 1e-3 relative)."""
    from fmjax.meanflow import student_config
    from fmjax.pipelines.common import flow_velocity
    from tests.train.corpus_helpers import SMALL_FLOW, micro_corpus
    from train.config import apply_overrides
    from train.configs import meanflow as meanflow_config
    from train.configs import reflow as reflow_config
    from train.experiments import build

    assert student_config(_centred(CosyVoice2Flow(SMALL_FLOW)).config).source_std == STD
    corpus = micro_corpus(tmp_path / "corpus")
    flow = [f"model.flow.{k}={v}" for k, v in (("source_mu", MU), ("source_std", STD))]
    common = [f"data.corpus={corpus}", "data.buckets=(24,)", "data.eval_sentences=1", "train.batch_size=2"]
    mf = build(apply_overrides(meanflow_config.get_config("tiny"), common + flow))
    params = mf.init_params(jax.random.key(0))
    batch, _ = next(iter(mf.train_batches(0, 0)))
    key = jax.random.key(1)
    _, got = mf.loss_fn(params, batch, key)  # the adaptive-weighted loss is ~1 by construction: compare the errors
    k_chunk, k_loss = jax.random.split(key)
    b, u = batch["tokens"].shape
    cond = flow_condition(mf.model, params, batch["tokens"], batch["token_len"], batch["spk"],
                          chunk=mf.chunks.draw(k_chunk, b, mf.model.config, u))
    d = mf.loss.draw(k_loss, batch["mel"], cond.mask)
    shifted = d._replace(z=STD * np.asarray(d.z) + MU * np.asarray(cond.mu))
    velocity = flow_velocity(mf.model, params)
    ref = mf.loss(velocity, batch["mel"], cond.mask, cond, k_loss, draws=shifted)[1]["per_example"]
    plain = mf.loss(velocity, batch["mel"], cond.mask, cond, k_loss, draws=d)[1]["per_example"]
    np.testing.assert_allclose(np.asarray(got["per_example"]), np.asarray(ref), rtol=1e-6)
    assert np.all(np.abs(np.asarray(plain) - np.asarray(ref)) > 1e-3 * np.abs(np.asarray(plain)))

    rf = build(apply_overrides(reflow_config.get_config("tiny"), common + flow))
    rparams = rf.init_params(jax.random.key(2))
    rng = np.random.default_rng(4)
    frames = 2 * int(batch["tokens"].shape[1])
    coupling = dict(tokens=batch["tokens"], token_len=batch["token_len"], spk=batch["spk"],
                    x0=rng.standard_normal((b, frames, 80)).astype(np.float32),
                    x1=rng.standard_normal((b, frames, 80)).astype(np.float32),
                    prompt=np.zeros((b, frames, 80), np.float32), row_mask=np.ones((b,), np.float32))
    got, _ = rf.loss_fn(rparams, coupling, key)
    rcond = flow_condition(rf.model, rparams, coupling["tokens"], coupling["token_len"], coupling["spk"],
                           prompt=coupling["prompt"])
    rvel = flow_velocity(rf.model, rparams)
    ref, _ = rf.loss(rvel, coupling["x1"], rcond.mask, rcond, key,
                     draws=LossDraws(z=STD * coupling["x0"] + MU * np.asarray(rcond.mu)))
    plain, _ = rf.loss(rvel, coupling["x1"], rcond.mask, rcond, key, draws=LossDraws(z=coupling["x0"]))
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
    assert abs(float(plain) - float(got)) > 1e-3 * abs(float(plain))


def test_runs_saved_before_the_source_existed_resume_only_at_pure_noise(tmp_path):
    """The tiny preset's config as a run saved before ``model.flow.source_mu/source_std`` existed: it resumes
    with the defaults and names the key otherwise."""
    from train.config import apply_overrides, config_to_dict
    from train.configs.token2mel import get_config
    from train.resume import IncompatibleRunError, check_resume

    now = config_to_dict(get_config("tiny"))
    saved = config_to_dict(get_config("tiny"))
    for key in ("source_mu", "source_std"):
        del saved["model"]["flow"][key]
    assert check_resume(tmp_path, saved, now, step=4) == {}
    changed = config_to_dict(apply_overrides(get_config("tiny"), ["model.flow.source_mu=1.0"]))
    with pytest.raises(IncompatibleRunError, match=r"model.flow.source_mu: <absent> in the run, 1.0 now"):
        check_resume(tmp_path, saved, changed, step=4)
