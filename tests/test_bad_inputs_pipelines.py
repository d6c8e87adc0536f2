"""Bad-input matrix of the pipeline entry points (``token2mel``, ``Token2MelStream.init/step``, ``Token2Wav``, the
estimators, the streaming vocoder): one row per case, each asserting the exception type and that the message names
the argument. The core's matrix is tests/test_bad_inputs.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.cond import MelCond
from fmjax.nn.masks import ChunkSpec
from fmjax.samplers import SamplerConfig
from fmjax.token2mel import token2mel
from fmjax.token2mel_stream import Token2MelStream
from fmjax.token2wav import GriffinLimVocoder, Token2Wav
from tests.models.test_flow import tiny_flow

B, N, P = 2, 4, 3


@pytest.fixture(scope="module")
def flow():
    return tiny_flow(chunk=2)


def _inputs():
    rng = np.random.default_rng(0)
    return dict(tokens=rng.integers(0, 50, (B, N)), embedding=rng.standard_normal((B, 12)).astype(np.float32),
                prompt_tokens=rng.integers(0, 50, (B, P)),
                prompt_mel=rng.standard_normal((B, 2 * P, 80)).astype(np.float32))


def _nan(a, index=(0, 0)):
    a = np.array(a, np.float32)
    a[index] = np.nan
    return a


TOKEN2MEL = [  # (id, changes to the inputs / kwargs, exception, the message must match)
    ("embedding nan", dict(embedding=_nan(_inputs()["embedding"])), ValueError, r"embedding: expected finite"),
    ("embedding int", dict(embedding=np.ones((B, 12), np.int32)), TypeError, r"embedding: expected a floating"),
    ("embedding shape", dict(embedding=np.ones((B, 11), np.float32)), ValueError, r"embedding: expected a speaker"),
    ("prompt_mel inf", dict(prompt_mel=_nan(_inputs()["prompt_mel"], (1, 2, 3)) * 0 + np.inf), ValueError,
     r"prompt_mel: expected finite"),
    ("prompt_mel shape", dict(prompt_mel=np.zeros((B, 5, 80), np.float32)), ValueError, r"prompt_mel: expected shape"),
    ("tokens float", dict(tokens=np.ones((B, N), np.float32)), TypeError, r"tokens: expected integer ids"),
    ("tokens oov", dict(tokens=np.full((B, N), 50)), ValueError, r"tokens: .* outside the vocabulary"),
    ("tokens 1-d", dict(tokens=np.ones((N,), np.int64)), ValueError, r"tokens: expected shape"),
    ("lengths too long", dict(lengths=np.array([5, 1])), ValueError, r"lengths: expected values in"),
    ("lengths zero", dict(lengths=np.array([0, 1])), ValueError, r"lengths: expected values in \[1"),
    ("noise nan", dict(noise=_nan(np.zeros((100, 80)))), ValueError, r"noise: expected finite"),
    ("noise short", dict(noise=np.zeros((3, 80), np.float32)), ValueError, r"noise: expected \[T >= 14"),
    ("noise and key", dict(noise=np.zeros((100, 80), np.float32), key=jax.random.key(0)), ValueError, r"noise/key"),
    ("cfg nan", dict(cfg_weight=float("nan")), ValueError, r"cfg_weight: expected a finite"),
    ("cfg negative", dict(cfg_weight=-1.0), ValueError, r"cfg_weight: expected a finite"),
    ("n_steps 0", dict(n_steps=0), ValueError, r"n_steps: expected an int >= 1"),
    ("solver", dict(solver="rk9"), ValueError, r"solver: expected one of"),
    ("grid outside", dict(grid=np.array([0.0, 0.5, 1.5])), ValueError, r"grid: .*within \[0, 1\]"),
    ("streaming float", dict(streaming=np.array([0.5, 1.0])), TypeError, r"streaming: expected a bool"),
    ("sampler type", dict(sampler=(0, 1)), TypeError, r"sampler: expected a fmjax.samplers.SamplerConfig"),
    ("prompt without tokens", dict(prompt_tokens=None), ValueError, r"prompt_mel/prompt_lengths: given without"),
]


@pytest.mark.parametrize("changes,error,match", [r[1:] for r in TOKEN2MEL], ids=[r[0] for r in TOKEN2MEL])
def test_token2mel_bad_input(flow, changes, error, match):
    model, params = flow
    args = {**_inputs(), **changes}
    with pytest.raises(error, match=match):
        token2mel(model, params, args.pop("tokens"), args.pop("embedding"), **args)


STREAM_INIT = [
    ("embedding nan", dict(embedding=_nan(_inputs()["embedding"])), ValueError, r"embedding: expected finite"),
    ("prompt_mel nan", dict(prompt_mel=_nan(_inputs()["prompt_mel"], (0, 0, 0))), ValueError,
     r"prompt_mel: expected finite"),
    ("prompt oov", dict(prompt_tokens=np.full((B, P), 99)), ValueError, r"prompt_tokens: .* outside the vocabulary"),
    ("noise too short", dict(noise=np.zeros((3, 80), np.float32)), ValueError, r"noise: a table of 3 frames"),
    ("grid length", dict(grid=np.linspace(0, 1, 7)), ValueError, r"grid: expected 4 times"),
]


@pytest.mark.parametrize("changes,error,match", [r[1:] for r in STREAM_INIT], ids=[r[0] for r in STREAM_INIT])
def test_stream_init_bad_input(flow, changes, error, match):
    model, params = flow
    stream = Token2MelStream(model, window_tokens=8, n_steps=3)
    args = {k: v for k, v in _inputs().items() if k != "tokens"} | changes
    with pytest.raises(error, match=match):
        stream.init(params, args.pop("embedding"), args.pop("prompt_tokens"), args.pop("prompt_mel"), **args)


def test_stream_step_and_config_bad_input(flow):
    model, params = flow
    stream = Token2MelStream(model, window_tokens=8, n_steps=3)
    state = stream.init(params, _inputs()["embedding"])
    ok = np.ones((B, 2), np.int64)
    rows = [
        (lambda: stream.step(params, state, ok, final=np.array([0.5, 1.0])), TypeError, r"final: expected a bool"),
        (lambda: stream.step(params, state, ok, lookahead_lengths=np.array([1, 1])), ValueError,
         r"lookahead_lengths: expected values in \[0, 0\]"),
        (lambda: stream.step(params, state, np.ones((B, 3), np.int64)), ValueError, r"tokens: expected shape"),
        (lambda: stream.step(params, (1, 2), ok), TypeError, r"state: expected a StreamState"),
        (lambda: Token2MelStream(model, window_tokens=1), ValueError, r"window_tokens: expected an int"),
        (lambda: Token2MelStream(model, window_tokens=8, n_steps=0), ValueError, r"n_steps: expected an int"),
        (lambda: Token2MelStream(model, window_tokens=8, cfg_weight=float("inf")), ValueError, r"cfg_weight"),
        (lambda: Token2MelStream(model, window_tokens=8, sampler="fast"), TypeError, r"sampler: expected"),
        (lambda: Token2MelStream(object(), window_tokens=8), TypeError, r"model: expected a flow"),
    ]
    for fn, error, match in rows:
        with pytest.raises(error, match=match):
            fn()


def test_token2wav_and_estimator_bad_input(flow):
    model, params = flow
    t2w = Token2Wav(Token2MelStream(model, window_tokens=8, n_steps=3), GriffinLimVocoder(n_iter=1))
    tp = t2w.prepare_params(params)
    state = t2w.init(tp, _inputs()["embedding"])
    b, t = 2, 4
    cond = MelCond(jnp.zeros((b, t, 80)), jnp.zeros((b, 80)), jnp.zeros((b, t, 80)), jnp.ones((b, t)))
    x = jnp.zeros((b, t, 80))
    rows = [
        (lambda: t2w.vocode(tp, _nan(np.zeros((1, 10, 80)), (0, 3, 3))), ValueError, r"mel: expected finite"),
        (lambda: t2w.init(tp, _inputs()["embedding"], stream_ids=[3, 3]), ValueError, r"stream_ids: expected distinct"),
        (lambda: t2w.init(tp, _inputs()["embedding"], stream_ids=[0.5, 1]), ValueError, r"stream_ids: expected \[2\]"),
        (lambda: t2w.step(params, state, np.ones((B, 2), np.int64)), TypeError, r"params: expected Token2WavParams"),
        (lambda: t2w.step(tp, state, np.ones((B, 2), np.float32)), TypeError, r"tokens: expected integer"),
        (lambda: model.apply(params, x, cond._replace(mask=0.5 * cond.mask), jnp.zeros(b), method="estimate"),
         ValueError, r"cond.mask: expected only 0/1"),
        (lambda: model.apply(params, x, cond._replace(chunk=ChunkSpec(jnp.zeros(b, jnp.int32),
                                                                      jnp.zeros(b, jnp.int32))),
                             jnp.zeros(b), method="estimate"), ValueError, r"cond.chunk.size: expected chunk sizes"),
        (lambda: model.apply(params, jnp.zeros((1, 3), jnp.int32), jnp.array([[1.0, 0.5, 0.0]]), method="encode"),
         ValueError, r"mask: expected only 0/1"),
        (lambda: SamplerConfig(grid=(0.0, 0.7, 0.3)), ValueError, r"grid: .*increasing"),
    ]
    for fn, error, match in rows:
        with pytest.raises(error, match=match):
            fn()
