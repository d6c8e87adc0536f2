"""Offline token-to-mel with a CosyVoice flow (prompt, speaker, CFG, fixed noise): CosyVoice2's ``flow.inference``,
batched.

Each row's sequence is ``[prompt tokens | tokens]``; the flow encodes it to ``mu`` (``r`` frames per token), the
prompt mel is the ``prompt`` condition on the first ``r·P`` frames, and an ODE from noise to data runs with
classifier-free guidance by batch doubling (``v = (1 + w)·v(c) − w·v(∅)``, ``w = 0.7``) on a time grid (cosine, 10
Euler steps by default: :class:`~fmjax.samplers.SamplerConfig`). The noise of frame ``f`` of a row is CosyVoice's
fixed ``rand_noise[f]`` (so a prefix always gets the same noise), or a ``jax.random`` draw from ``key``; the ODE
starts from it, or from ``source_std · noise + source_mu · mu`` for a flow configured with a source centred on its
condition (:func:`fmjax.pipelines.common.flow_source`). Only the frames after the prompt are returned.

``streaming`` selects, per row, the chunk attention masks of the streaming mode (torch ``streaming=True``), the
offline twin of :class:`~fmjax.pipelines.stream.Token2MelStream`. It is data (a ``[b]`` bool, or one bool for all
rows): both modes run through one compiled program.

Rows of a batch are padded on the right. The estimator ignores padding exactly; the CosyVoice2 encoder, like
torch's, lets the look-ahead conv of a shorter row read its embedded padding (see
:class:`~fmjax.models.encoder.UpsampleConformerEncoder`), so a short row in a ragged batch differs slightly from
the same row run alone in its last frames' context.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.models.protocol import check_flow
from fmjax.nn.tokens import check_speaker_embedding
from fmjax.pipelines.common import (
    check_finite,
    check_id_batch,
    flow_condition,
    flow_source,
    flow_velocity,
    noise_table,
    pack_prompt,
    prompt_condition,
)
from fmjax.samplers import SamplerConfig, get_solver, sample
from fmjax.typing import Array, Float, Int, Key

__all__ = ["Token2MelOutput", "token2mel", "sampler_config"]


class Token2MelOutput(NamedTuple):
    """Result of :func:`token2mel`.

    Attributes:
      mel: ``[b, r·n, m]`` generated frames after each row's prompt, zero past ``lengths``.
      lengths: ``[b]`` int32 valid frames (``r ·`` tokens).
      aux: None, or (``return_aux=True``) a dict with ``mu``, ``mask``, ``spks``, ``prompt``, ``noise`` (the whole
        ``[b, T, m]`` sequences), ``encoder_out`` (the encoder's hidden output), ``trajectory`` ``[n, b, T, m]`` and
        ``grid``.
    """

    mel: Float[Array, "b f m"]
    lengths: Int[Array, "b"]
    aux: Any = None


def sampler_config(sampler=None, *, grid=None, n_steps=None, solver=None, cfg_weight=None, model=None) -> SamplerConfig:
    """A :class:`~fmjax.samplers.SamplerConfig` from ``sampler`` (or the defaults) with the given fields replaced
    (``grid`` may be a name or an array of times).

    With ``model``: the defaults are a MeanFlow student's (:data:`fmjax.meanflow.STUDENT_SAMPLER`: 2 ``meanflow``
    steps on the linear grid, no CFG) when it is one, and the result is checked against it
    (:func:`fmjax.meanflow.check_sampler`: CFG asked of a student, or the ``meanflow`` solver for a plain flow, raise
    naming ``cfg_weight`` / ``sampler.cfg_weight`` or ``solver`` / ``sampler.solver``)."""
    from fmjax import meanflow

    if sampler is not None and not isinstance(sampler, SamplerConfig):
        raise TypeError(f"sampler: expected a fmjax.samplers.SamplerConfig, got {type(sampler).__name__}")
    base = sampler or (meanflow.STUDENT_SAMPLER if model is not None and meanflow.is_student(model) else SamplerConfig())
    fields = dict(grid=base.grid, n_steps=base.n_steps, solver=base.solver, cfg_weight=base.cfg_weight)
    if grid is not None:
        fields["grid"] = grid if isinstance(grid, str) else tuple(np.asarray(grid, np.float64).reshape(-1).tolist())
    fields.update({k: v for k, v in (("n_steps", n_steps), ("solver", solver), ("cfg_weight", cfg_weight))
                   if v is not None})
    resolved = SamplerConfig(**fields)
    if model is not None:
        meanflow.check_sampler(model, resolved, cfg_name="cfg_weight" if cfg_weight is not None or sampler is None
                               else "sampler.cfg_weight",
                               solver_name="solver" if solver is not None or sampler is None else "sampler.solver")
    return resolved


def token2mel(
    model,
    params,
    tokens,
    embedding,
    *,
    lengths=None,
    prompt_tokens=None,
    prompt_mel=None,
    prompt_lengths=None,
    streaming=False,
    sampler: SamplerConfig | None = None,
    grid=None,
    n_steps: int | None = None,
    solver: str | None = None,
    cfg_weight: float | None = None,
    noise=None,
    key: Key | None = None,
    return_aux: bool = False,
) -> Token2MelOutput:
    """Generates mel frames for speech tokens (CosyVoice2 ``flow.inference(..., finalize=True)``, batched).

    Args:
      model: a flow (:class:`fmjax.models.protocol.Flow`: CosyVoice2's, CosyVoice3's, ...) with ``params``.
      tokens: ``[b, n]`` int ids to synthesise.
      embedding: ``[b, spk_embed_dim]`` speaker embeddings.
      lengths: ``[b]`` valid tokens per row (default all ``n``).
      prompt_tokens: ``[b, p]`` ids of the prompt (None = no prompt).
      prompt_mel: ``[b, r·p, m]`` the prompt's mel (CosyVoice's ``prompt_feat``), ``r`` frames per prompt token.
      prompt_lengths: ``[b]`` valid prompt tokens per row (default all ``p``).
      streaming: chunk attention masks (torch ``streaming=True``) instead of full context: a bool, or ``[b]`` bools
        (data: one compiled program serves both).
      sampler: grid, steps, solver and CFG weight (default :class:`~fmjax.samplers.SamplerConfig`: cosine, 10,
        Euler, 0.7; for a MeanFlow student 2 ``meanflow`` steps on the linear grid without CFG, which it must not be
        asked for); ``grid`` (a name or an ``[n + 1]`` array), ``n_steps``, ``solver``, ``cfg_weight`` override
        its fields.
      noise: ``[T, m]`` or ``[b, T, m]`` initial noise with ``T >=`` the longest ``r·(p + n)``; default
        CosyVoice's fixed noise (frame ``f`` of every row gets ``rand_noise[f]``).
      key: draw the noise from ``jax.random.normal(key, [b, T, m])`` instead.
      return_aux: also return intermediates (see :class:`Token2MelOutput`).

    Returns:
      :class:`Token2MelOutput` ``(mel [b, r·n, m], lengths [b], aux)``.
    """
    check_flow(model)
    cfg = model.config
    r, m = cfg.token_mel_ratio, cfg.mel_dim
    sampler = sampler_config(sampler, grid=grid, n_steps=n_steps, solver=solver, cfg_weight=cfg_weight, model=model)
    tokens, lengths = check_id_batch(tokens, lengths, cfg.vocab_size, "tokens", "lengths", allow_empty=False)
    b = tokens.shape[0]
    check_speaker_embedding(embedding, b, cfg.spk_embed_dim)
    check_finite("embedding", embedding)
    if prompt_tokens is None:
        if prompt_mel is not None or prompt_lengths is not None:
            raise ValueError("prompt_mel/prompt_lengths: given without prompt_tokens")
        prompt_tokens, prompt_lengths = np.zeros((b, 0), np.int32), np.zeros((b,), np.int64)
        prompt_mel = np.zeros((b, 0, m), np.float32)
    else:
        prompt_tokens, prompt_lengths = check_id_batch(
            prompt_tokens, prompt_lengths, cfg.vocab_size, "prompt_tokens", "prompt_lengths", batch=b
        )
        expected = (b, r * prompt_tokens.shape[1], m)
        if prompt_mel is None or tuple(np.shape(prompt_mel)) != expected:
            raise ValueError(
                f"prompt_mel: expected shape {expected} ({r} frames per prompt token), got "
                f"{None if prompt_mel is None else np.shape(prompt_mel)}"
            )
        check_finite("prompt_mel", prompt_mel)
    chunked = np.asarray(streaming)
    if chunked.dtype != bool or chunked.shape not in ((), (b,)):
        raise TypeError(f"streaming: expected a bool or [{b}] bools, got {chunked.dtype} of shape {chunked.shape}")
    if chunked.any() and not cfg.causal:
        raise ValueError(f"streaming: {type(model).__name__} is not causal and has no chunk-masked mode")
    width = int(np.max(prompt_lengths + lengths))  # the longest row: no extra padding
    noise = noise_table(noise, key, m, frames=r * width, batch=b)
    noise = jnp.broadcast_to(noise[..., : r * width, :], (b, r * width, m))
    static = SamplerConfig("linear", sampler.n_steps, sampler.solver, sampler.cfg_weight)  # the grid is data
    return _token2mel(
        model, static, bool(return_aux), width, params, jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32),
        jnp.asarray(prompt_tokens), jnp.asarray(prompt_lengths, jnp.int32), jnp.asarray(prompt_mel, jnp.float32),
        jnp.asarray(embedding, jnp.float32), noise, jnp.asarray(sampler.time_grid()),
        jnp.broadcast_to(jnp.asarray(chunked), (b,)),
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _token2mel(model, sampler, return_aux, width, params, tokens, lengths, prompt_tokens, prompt_lengths, prompt_mel,
               embedding, noise, grid, chunked) -> Token2MelOutput:
    cfg = model.config
    r = cfg.token_mel_ratio
    seq, total = pack_prompt(tokens, lengths, prompt_tokens, prompt_lengths, width)  # [b, s]
    prompt_frames = r * prompt_lengths
    chunk = cfg.chunk_spec(chunked) if cfg.causal else None
    cond, enc_aux = flow_condition(model, params, seq, total, embedding, chunk=chunk, return_aux=True)
    cond = cond._replace(prompt=prompt_condition(prompt_mel, prompt_frames, cond.mu.shape[1]))
    velocity = sampler.guided(flow_velocity(model, params))
    x1, sample_aux = sample(velocity, flow_source(cfg, noise, cond.mu), cond, grid, get_solver(sampler.solver), return_trajectory=return_aux)
    n_frames = r * tokens.shape[1]
    idx = jnp.clip(prompt_frames[:, None] + jnp.arange(n_frames)[None, :], 0, x1.shape[1] - 1)  # [b, f]
    mel = jnp.take_along_axis(x1, idx[..., None], axis=1)  # [b, r·n, m]: the frames after the prompt
    out_len = (r * lengths).astype(jnp.int32)
    mel = jnp.where((jnp.arange(n_frames)[None, :] < out_len[:, None])[..., None], mel, 0.0)
    aux = None
    if return_aux:
        aux = dict(mu=cond.mu, mask=cond.mask, spks=cond.spks, prompt=cond.prompt, noise=noise,
                   trajectory=sample_aux.trajectory, grid=grid, encoder_out=enc_aux["hidden"])
    return Token2MelOutput(mel, out_len, aux)
