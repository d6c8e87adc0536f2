"""A MeanFlow student streams exactly as a teacher: Token2MelStream == the student's own offline chunk-masked
token2mel (1e-4) with one compilation per stream, for NFE 1 and 2; Token2Wav and ``python -m fmjax.cli token2wav``
take it (no CFG by default); CFG asked of it, NFE 0 and the meanflow solver on a plain flow raise naming the
argument."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from fmjax import meanflow
from fmjax.cli import main
from fmjax.models.flow import CosyVoice2Flow
from fmjax.pipelines.stream import _advance
from fmjax.samplers import SamplerConfig
from fmjax.token2mel import token2mel
from fmjax.token2mel_stream import Token2MelStream
from fmjax.token2wav import GriffinLimVocoder, Token2Wav
from tests.models.test_flow import tiny_flow
from tests.test_token2mel_stream import _assert_rows_equal, _data, stream_all


def _student(model, params):
    """The student of a teacher with its r embedding randomised (as after training: the student differs from the
    teacher, and r matters)."""
    student = CosyVoice2Flow(meanflow.student_config(model.config))
    sparams = meanflow.student_params(student, params, jax.random.key(1))
    rng = np.random.default_rng(2)
    sparams = jax.tree_util.tree_map_with_path(
        lambda p, a: (0.3 * rng.standard_normal(a.shape)).astype(np.float32)
        if "time_mlp_r" in jax.tree_util.keystr(p) else a, sparams)
    return student, sparams


@pytest.fixture(scope="module")
def student():
    return _student(*tiny_flow(chunk=2))


@pytest.mark.parametrize("nfe", [1, 2])
def test_student_stream_equals_offline_chunk_masked_one_compilation(student, nfe):
    """Rows with prompts of 4, 5 and 0 tokens (aligned and not to C = 2), equal totals (13: a final partial
    chunk); defaults: meanflow solver, linear grid, no CFG (one estimator row per stream row)."""
    model, params = student
    plens = np.array([4, 5, 0])
    lengths = 13 - plens
    tokens, emb, prompt, pmel = _data(nfe, 3, int(lengths.max()), int(plens.max()))
    offline = token2mel(model, params, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                        prompt_lengths=plens, streaming=True, n_steps=nfe)
    stream = Token2MelStream(model, window_tokens=14, n_steps=nfe)
    assert stream.sampler == SamplerConfig("linear", nfe, "meanflow", 0.0)
    before = _advance._cache_size()
    streamed, state = stream_all(stream, stream.prepare_params(params), tokens, lengths, emb, prompt, pmel, plens)
    assert _advance._cache_size() - before == 1, "the stream step compiled more than once"
    _assert_rows_equal(streamed, offline, lengths, f"student NFE {nfe}")
    assert jax.tree_util.tree_leaves(state.rows.estimator)[0].shape[:3] == (nfe, 1, 3)  # [n, stages, b]: no CFG rows
    teacher_like = token2mel(model, params, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                             prompt_lengths=plens, streaming=True, n_steps=nfe, solver="euler")
    assert float(np.abs(np.asarray(teacher_like.mel) - np.asarray(offline.mel)).max()) > 1e-3  # r is used


def test_student_token2wav_streams_its_offline_mel(student):
    model, params = student
    t2w = Token2Wav(Token2MelStream(model, window_tokens=32, n_steps=2), GriffinLimVocoder(n_iter=2))
    fp = t2w.prepare_params(params)
    tokens, emb, prompt, pmel = _data(3, 2, 24, 5)
    plens, lengths = np.array([5, 2]), np.array([21, 24])
    state = t2w.init(fp, emb, prompt, pmel, prompt_lengths=plens)
    mel, wav = [[], []], [[], []]
    for start in range(0, 24, 7):
        k = np.clip(lengths - start, 0, 7)
        piece = np.stack([np.pad(tokens[i, start : start + k[i]], (0, 7 - k[i]))[:7] for i in range(2)])
        state, out = (t2w.finalize if start + 7 >= 24 else t2w.step)(fp, state, piece, lengths=k)
        for i in range(2):
            mel[i].append(np.asarray(out.mel[i])), wav[i].append(out.wav[i])
    wav_off, off = t2w.offline(fp, tokens, emb, lengths=lengths, prompt_tokens=prompt, prompt_mel=pmel,
                               prompt_lengths=plens)
    for i in range(2):
        got = np.concatenate(mel[i])
        err = float(np.abs(got - np.asarray(off.mel[i, : 2 * lengths[i]])).max())
        assert err < 1e-4, f"row {i}: streamed vs offline mel {err:.3g} (tol 1e-4)"
        assert np.concatenate(wav[i]).shape == wav_off[i].shape == (2 * 480 * lengths[i],)


def test_cli_streams_a_student_and_refuses_cfg(student, tmp_path, capsys):
    from fmjax.checkpoint import save_flow_checkpoint

    model, params = student
    config = dataclasses.replace(model.config, vocab_size=256, spk_embed_dim=192)
    big = CosyVoice2Flow(config)
    from fmjax.models.flow import init_flow_params

    fresh = jax.jit(lambda k: init_flow_params(big, k))(jax.random.key(0))
    save_flow_checkpoint(tmp_path / "student", config, fresh)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ids.npy", rng.integers(0, 256, 20))
    np.save(tmp_path / "spk.npy", rng.standard_normal(192).astype(np.float32))
    args = ["token2wav", "--flow", str(tmp_path / "student"), "--tokens", str(tmp_path / "ids.npy"),
            "--speaker-embedding", str(tmp_path / "spk.npy"), "--gl-iters", "2", "--chunk", "7", "--no-progress",
            "--single-pass", "--window", "32", "--out", str(tmp_path / "out.wav")]
    assert main(args) == 0
    assert "20 tokens, prompt 0; streaming" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--cfg", "0.7"])
    assert "--cfg: the flow is a MeanFlow student" in capsys.readouterr().err


def test_bad_sampling_of_students_and_teachers(student):
    model, params = student
    teacher, tparams = tiny_flow(chunk=2)
    tokens, emb = np.ones((1, 4), np.int32), np.ones((1, 12), np.float32)
    with pytest.raises(ValueError, match="cfg_weight: the model is a MeanFlow student with classifier-free guidance"):
        token2mel(model, params, tokens, emb, cfg_weight=0.7)
    with pytest.raises(ValueError, match=r"sampler\.cfg_weight: the model is a MeanFlow student"):
        Token2MelStream(model, window_tokens=8, sampler=SamplerConfig("linear", 2, "meanflow", 0.7))
    with pytest.raises(ValueError, match="n_steps: expected an int >= 1, got 0"):
        Token2MelStream(model, window_tokens=8, n_steps=0)
    with pytest.raises(ValueError, match="solver: 'meanflow' steps a MeanFlow student's average velocity"):
        token2mel(teacher, tparams, tokens, emb, solver="meanflow")
    with pytest.raises(ValueError, match=r"sampler\.solver: 'meanflow'"):
        Token2MelStream(teacher, window_tokens=8, sampler=SamplerConfig("linear", 2, "meanflow", 0.0))
