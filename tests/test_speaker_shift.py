"""The flow config's per-speaker offset of the condition (``Token2MelConfig.speaker_shift``: ``mu += mu_shift(spks)``):
the condition equals the default flow's plus the offset computed here in numpy; a new model starts as the default
one; a stream of a shifted (and centred) flow still equals its offline twin; the loss trains the offset; bad values
and resumes of older runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.loss import LossDraws
from fmjax.models.flow import CosyVoice2Flow, Token2MelConfig, init_flow_params
from fmjax.noise import cosyvoice_noise
from fmjax.pipelines.common import flow_condition
from fmjax.pipelines.training import UnifiedChunks, flow_loss
from fmjax.token2mel import token2mel
from tests.models.test_flow import tiny_flow
from tests.test_flow_source import assert_stream_equals_offline

STEPS = 3


def _shifted(seed: int = 0, **fields):
    """``(default model, shifted model, default params, shifted params)``: the same parameters plus a random
    ``mu_shift`` (kernel ``[spk_dim, mel_dim]`` scaled by 1/sqrt(spk_dim), bias 0.3·N)."""
    model, params = tiny_flow(2, seed=seed)
    shifted = CosyVoice2Flow(dataclasses.replace(model.config, speaker_shift=True, **fields))
    cfg = shifted.config
    rng = np.random.default_rng(seed + 100)
    shift = {"kernel": (rng.standard_normal((cfg.spk_dim, cfg.mel_dim)) / np.sqrt(cfg.spk_dim)).astype(np.float32),
             "bias": (0.3 * rng.standard_normal(cfg.mel_dim)).astype(np.float32)}
    return model, shifted, params, {"params": {**params["params"], "mu_shift": shift}}


def test_condition_is_the_default_condition_plus_the_offset():
    """flow_condition of a shifted flow: ``mu`` == the default flow's ``mu + spks @ W + b`` (numpy; 1e-5 abs), the
    other fields unchanged; a freshly initialised shifted flow has a zero offset (its ``mu`` equals the default's
    with the same other parameters)."""
    model, shifted, params, sparams = _shifted()
    rng = np.random.default_rng(1)
    tokens, lengths = jnp.asarray(rng.integers(0, 50, (3, 7)), jnp.int32), jnp.asarray([7, 5, 2])
    emb = jnp.asarray(rng.standard_normal((3, 12)), jnp.float32)
    ref = flow_condition(model, params, tokens, lengths, emb)
    got = flow_condition(shifted, sparams, tokens, lengths, emb)
    w, b = sparams["params"]["mu_shift"]["kernel"], sparams["params"]["mu_shift"]["bias"]
    expected = np.asarray(ref.mu) + (np.asarray(ref.spks) @ w + b)[:, None]
    err = float(np.abs(np.asarray(got.mu) - expected).max())
    assert err < 1e-5, f"shifted mu vs mu + spks·W + b: max abs error {err:.3g} (tol 1e-5)"
    assert float(np.abs(np.asarray(got.mu) - np.asarray(ref.mu)).max()) > 0.1  # the offset does change it
    for name in ("spks", "prompt", "mask"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(ref, name)))
    fresh = init_flow_params(shifted, jax.random.key(0))["params"]["mu_shift"]
    assert not np.any(np.asarray(fresh["kernel"])) and not np.any(np.asarray(fresh["bias"]))
    assert "mu_shift" not in init_flow_params(model, jax.random.key(0))["params"]  # the default adds no parameter


def test_offline_token2mel_uses_the_shifted_condition():
    """Offline token2mel of a shifted flow: with a zero offset it equals the default flow (1e-6 abs); with the
    random offset the sample changes (> 0.05): the sampler reads the shifted condition."""
    model, shifted, params, sparams = _shifted()
    rng = np.random.default_rng(3)
    tokens, lengths = rng.integers(0, 50, (2, 7)), np.array([7, 5])
    emb = rng.standard_normal((2, 12)).astype(np.float32)
    noise = cosyvoice_noise(14, 80)
    got = token2mel(shifted, sparams, tokens, emb, lengths=lengths, noise=noise, n_steps=STEPS)
    zero = jax.tree_util.tree_map(jnp.zeros_like, sparams["params"]["mu_shift"])
    same = token2mel(shifted, {"params": {**sparams["params"], "mu_shift": zero}}, tokens, emb, lengths=lengths,
                     noise=noise, n_steps=STEPS)
    plain = token2mel(model, params, tokens, emb, lengths=lengths, noise=noise, n_steps=STEPS)
    err = float(np.abs(np.asarray(same.mel) - np.asarray(plain.mel)).max())
    assert err < 1e-6, f"zero offset vs the default flow: max abs error {err:.3g} (tol 1e-6)"
    assert float(np.abs(np.asarray(got.mel) - np.asarray(plain.mel)).max()) > 0.05


def test_shifted_centred_stream_equals_its_offline_chunk_masked_twin():
    """As tests/test_token2mel_stream.py's C=2 case (prompts aligned, not, none; a final partial chunk), for a flow
    with the offset and a centred source (``x0 = 0.5·z + mu``): the stream adds the offset to each chunk's ``mu``;
    tolerance 1e-4 abs."""
    _, model, _, params = _shifted(source_mu=1.0, source_std=0.5)
    assert_stream_equals_offline(model, params, "speaker offset + centred source, C=2")


def test_the_loss_trains_the_offset():
    """flow_loss with the prior loss: the gradient reaches ``mu_shift`` (non-zero), and the offset changes the
    loss; without the offset the model has no such parameter."""
    _, model, _, params = _shifted()
    rng = np.random.default_rng(5)
    tokens, token_len = rng.integers(0, 50, (2, 6)).astype(np.int32), np.array([6, 4], np.int32)
    batch = dict(tokens=tokens, token_len=token_len, mel=rng.standard_normal((2, 12, 80)).astype(np.float32),
                 spk=rng.standard_normal((2, 12)).astype(np.float32))
    draws, key, full = LossDraws(z=rng.standard_normal((2, 12, 80)).astype(np.float32)), jax.random.key(7), \
        UnifiedChunks(0.0)

    def loss(p):
        return flow_loss(model, p, batch, key, chunks=full, draws=draws, prior_weight=1.0)[0]

    grads = jax.grad(loss)(params)["params"]["mu_shift"]
    assert float(jnp.abs(grads["kernel"]).max()) > 0 and float(jnp.abs(grads["bias"]).max()) > 0
    zero = {"params": {**params["params"], "mu_shift": jax.tree_util.tree_map(jnp.zeros_like,
                                                                              params["params"]["mu_shift"])}}
    assert abs(float(loss(params)) - float(loss(zero))) > 1e-4


@pytest.mark.parametrize("value", [1, 0, "True", None, 1.0])
def test_bad_speaker_shift_values_name_the_field(value):
    with pytest.raises(TypeError, match=r"Token2MelConfig.speaker_shift: expected a bool"):
        Token2MelConfig(speaker_shift=value)


def test_runs_saved_before_the_offset_existed_resume_without_it(tmp_path):
    """The tiny preset's config as a run saved before ``model.flow.speaker_shift`` existed: it resumes with the
    default and names the key otherwise."""
    from train.config import apply_overrides, config_to_dict
    from train.configs.token2mel import get_config
    from train.resume import IncompatibleRunError, check_resume

    now = config_to_dict(get_config("tiny"))
    saved = config_to_dict(get_config("tiny"))
    del saved["model"]["flow"]["speaker_shift"]
    assert check_resume(tmp_path, saved, now, step=4) == {}
    changed = config_to_dict(apply_overrides(get_config("tiny"), ["model.flow.speaker_shift=True"]))
    with pytest.raises(IncompatibleRunError, match=r"model.flow.speaker_shift: <absent> in the run, True now"):
        check_resume(tmp_path, saved, changed, step=4)
