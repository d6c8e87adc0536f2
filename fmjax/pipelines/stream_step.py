"""The pure step of :class:`fmjax.pipelines.stream.Token2MelStream`: every row's FIFO bookkeeping and the chunk loop
(encoder chunk step + the chunk's whole ODE, :func:`fmjax.streaming.sample_chunk`) for all rows at once. The stream
jits it (``fmjax.pipelines.stream._advance``, its state donated); :mod:`fmjax.export` exports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from fmjax.cond import MelCond
from fmjax.pipelines.common import flow_source, flow_step_velocity, shift_condition
from fmjax.samplers import get_solver
from fmjax.streaming import sample_chunk

if TYPE_CHECKING:
    from fmjax.pipelines.stream import StreamRows, Token2MelStream

__all__ = ["advance_rows"]


def advance_rows(stream: Token2MelStream, params, rows: StreamRows, grid, noise, tokens, n, mel, ahead, n_ahead,
                 final):
    """The step, pure (jit it; :mod:`fmjax.export` exports it): append the input to every row's FIFO, then compute
    chunks while any row has one ready (rows without a ready chunk are idle in that iteration). ``tokens [b, C]``
    (``n`` valid), prompt ``mel [b, r·C, m]``, ``ahead [b, L]`` (``n_ahead`` valid), ``final [b]`` bool. Returns
    ``(rows, mel [b, r·(2C + L), m], frames [b] int32)``: the new frames of each row (zeros after ``frames``)."""
    model, cfg = stream.model, stream.model.config
    c, r, la, m = cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len, cfg.mel_dim
    q, out_frames = stream.fifo_tokens, stream.max_frames_per_step
    b = tokens.shape[0]
    solver = get_solver(stream.solver)
    guided = stream.sampler.guided(flow_step_velocity(model, params), cached=True)
    frame = jnp.arange(r * c)
    prompt_frames = r * rows.prompt_len  # [b]

    def append(fifo, fifo_mel, held, tokens, n, mel, ahead):  # one row's FIFO bookkeeping (cheap; vmapped)
        fifo = jax.lax.dynamic_update_slice(fifo, tokens, (held,))  # [q]
        fifo_mel = jax.lax.dynamic_update_slice(fifo_mel, mel, (r * held, 0))  # [r·q, m]
        ext = jax.lax.dynamic_update_slice(jnp.pad(fifo, (0, la)), ahead, (held + n,))  # [q + L]: FIFO, look-ahead
        return ext, fifo_mel

    ext, fifo_mel = jax.vmap(append)(rows.fifo, rows.fifo_mel, rows.held, tokens, n, mel, ahead)
    held = rows.held + n
    known = held + jnp.where(final, 0, n_ahead)

    def ready(held, known):
        return ((held >= c) & (known >= c + la)) | (final & (held > 0))  # [b]

    def chunk(carry):
        ext, fifo_mel, held, known, done, enc_cache, est_cache, out, n_out = carry
        active = ready(held, known)  # [b]
        valid = jnp.where(active, jnp.minimum(held, c), 0)  # [b] tokens of this chunk; 0 = idle row
        mu, enc_cache = model.apply(
            params, ext[:, :c], valid, context=ext[:, c : c + la],
            context_lengths=jnp.where(active, jnp.clip(known - c, 0, la), 0), cache=enc_cache, method="encode",
        )  # [b, r·C, m]
        mu = shift_condition(model, params, mu, rows.spks)  # the per-speaker offset, if the config has one
        first = r * done  # [b] absolute frame of each row's chunk
        prompt = jnp.where((first[:, None] + frame[None] < prompt_frames[:, None])[..., None],
                           fifo_mel[:, : r * c], 0.0)  # [b, r·C, m]
        cond = MelCond(mu, rows.spks, prompt, (frame[None] < r * valid[:, None]).astype(mu.dtype))
        x0 = jnp.take(noise, jnp.clip(first[:, None] + frame[None], 0, noise.shape[0] - 1), axis=0)  # [b, r·C, m]
        x0 = flow_source(cfg, x0, mu)  # the config's source (pure noise by default: unchanged)
        x1, est_cache = sample_chunk(guided, x0, cond, grid, est_cache, solver)
        skip = jnp.clip(prompt_frames - first, 0, r * c)[:, None]  # leading prompt frames are not emitted
        emit = (frame[None] >= skip) & (frame[None] < r * valid[:, None])  # [b, r·C]
        index = jnp.where(emit, n_out[:, None] + frame[None] - skip, out_frames)
        out = out.at[jnp.arange(b)[:, None], index].set(x1, mode="drop")
        n_out = n_out + jnp.sum(emit, axis=1, dtype=jnp.int32)
        shift = active[:, None]
        ext = jnp.where(shift, jnp.pad(ext[:, c:], ((0, 0), (0, c))), ext)
        fifo_mel = jnp.where(shift[..., None], jnp.pad(fifo_mel[:, r * c :], ((0, 0), (0, r * c), (0, 0))), fifo_mel)
        held = jnp.where(active, jnp.maximum(held - c, 0), held)
        known = jnp.where(active, jnp.maximum(known - c, 0), known)
        done = jnp.where(active, done + c, done)
        return ext, fifo_mel, held, known, done, enc_cache, est_cache, out, n_out

    carry = (ext, fifo_mel, held, known, rows.done, rows.encoder, rows.estimator,
             jnp.zeros((b, out_frames, m), jnp.float32), jnp.zeros((b,), jnp.int32))
    ext, fifo_mel, held, _, done, enc_cache, est_cache, out, n_out = jax.lax.while_loop(
        lambda carry: jnp.any(ready(carry[2], carry[3])), chunk, carry)
    new_rows = rows._replace(fifo=ext[:, :q], fifo_mel=fifo_mel, held=held, done=done, encoder=enc_cache,
                             estimator=est_cache)
    return new_rows, out, n_out
