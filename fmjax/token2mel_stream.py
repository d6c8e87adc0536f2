"""Streaming token-to-mel with fixed-size caches: O(1) work per chunk, output equal to offline chunk-masked inference.

A stream is the sequence ``[prompt tokens | new tokens]`` of one row, cut into **absolute chunks** of ``C`` tokens
(token ``j`` is in chunk ``j // C``), exactly the chunks of the offline chunk masks (CosyVoice2 aligns them the
same way with ``prompt_token_pad``). Chunk ``k`` is computed once: the encoder turns its tokens (plus the next
``L = 3`` look-ahead tokens) into ``mu`` for frames ``[r·k·C, r·(k+1)·C)`` continuing the encoder's caches, and
the whole ODE runs for those frames (:func:`fmjax.streaming.sample_chunk`: one estimator cache per ODE step,
updated in place; CFG by batch doubling) from CosyVoice's fixed noise at the same absolute frames. The prompt mel
is the ``prompt`` condition of the prompt's frames; frames of prompt tokens are never emitted.

**Prompt alignment.** Tokens arrive in a per-row FIFO. A chunk is computed as soon as its ``C`` tokens and its
``L`` look-ahead tokens are known (at a final step: as soon as it holds any token). :meth:`Token2MelStream.init`
pushes the prompt through the same jitted step, so every prompt chunk whose look-ahead lies inside the prompt
is computed there, and the rest (at most ``C + L − 1`` prompt tokens: the prompt's partial chunk, and its last
whole chunk when the look-ahead reaches past the prompt) waits in the FIFO. The first :meth:`Token2MelStream.step`
appends its tokens behind them and computes every chunk that became complete: for ``P mod C = q`` that is the
chunk holding the prompt's last ``q`` tokens and the first ``C − q`` new ones (it emits ``r·(C − q)`` frames),
preceded by the last whole prompt chunk when ``q < L``; the last ``q`` new tokens wait for the next step. So a
stream emits ``r·(C − q)`` frames first and ``r·C`` per step after that, with no extra latency, and the same
compiled step serves all of it: the number of chunks per call is a ``lax.while_loop`` count.

**Batches.** Rows are independent streams (``jax.vmap`` over per-row states, each with its own positions; a single
stream skips the ``vmap``), fed in lockstep: each call gives every row up to ``C`` tokens (``lengths``), its next
``L`` look-ahead tokens (``lookahead_lengths``; fewer only at the end of the known tokens), and a per-row ``final``
flag. A final step computes the row's remaining chunks without look-ahead (torch's ``finalize``); afterwards the
row is ended. A step whose look-ahead is short computes nothing new for that row (its tokens wait in the FIFO).

**State size.** Per row: the FIFO (``2C + L`` tokens and their prompt mel), the encoder caches (K/V rings of
``window_tokens`` tokens) and ``n_steps × stages`` estimator caches (rings of ``r·window_tokens`` frames, CFG rows
included): fixed by ``(window_tokens, n_steps)``, never by the stream's length. With ``num_left_chunks = L >= 0`` a
window of ``(L + 1)·C`` tokens makes every chunk exact; with ``-1`` (all left chunks) chunks are exact while the
stream fits the window (``⌈(P + N) / C⌉·C <= window_tokens``: prompt included, the last chunk counted whole),
then attention slides over the last ``window_tokens`` tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax.cond import MelCond
from fmjax.models.flow import check_speaker_embedding
from fmjax.noise import MAX_FRAMES, cosyvoice_noise
from fmjax.samplers import Solver, classifier_free_guidance_cached, get_solver
from fmjax.streaming import cache_nbytes, init_sampler_caches, sample_chunk, take_frames
from fmjax.timesteps import time_grid
from fmjax.token2mel import check_ids, check_lengths
from fmjax.typing import Array, Float, Int, Key

__all__ = ["Token2MelStream", "StreamState", "StreamRows", "StreamOutput"]


class StreamRows(NamedTuple):
    """Device state of the streams; every leaf has the row axis first (the caches keep their own batch axis
    of 1 — 2 for the estimator with CFG — after it).

    Attributes:
      fifo: ``[b, 2C + L]`` int32 received tokens not yet computed (the first ``held`` are valid).
      fifo_mel: ``[b, r·(2C + L), m]`` their prompt mel (zeros for new tokens).
      held: ``[b]`` int32 tokens in the FIFO.
      done: ``[b]`` int32 tokens computed (``C ×`` chunks): the absolute index of ``fifo[0]``.
      prompt_len: ``[b]`` int32 prompt tokens ``P``.
      spks: ``[b, spk_dim]`` projected speaker vectors.
      encoder: the encoder (token side) caches.
      estimator: the estimator caches, leaves ``[b, n, stages, ...]``.
    """

    fifo: Int[Array, "b q"]
    fifo_mel: Float[Array, "b f m"]
    held: Int[Array, "b"]
    done: Int[Array, "b"]
    prompt_len: Int[Array, "b"]
    spks: Float[Array, "b s"]
    encoder: Any
    estimator: Any


class StreamState(NamedTuple):
    """A batch of streams: device ``rows``, the time ``grid`` and ``noise`` table they share, and host-side
    bookkeeping (numpy) used to validate calls without reading the device.

    Attributes:
      rows: :class:`StreamRows`.
      grid: ``[n + 1]`` ODE time grid (data).
      noise: ``[T, m]`` noise table indexed by absolute frame.
      received: ``[b]`` numpy int, tokens received per row (prompt included).
      ended: ``[b]`` numpy bool, rows whose final step has run.
    """

    rows: StreamRows
    grid: Float[Array, "g"]
    noise: Float[Array, "T m"]
    received: np.ndarray
    ended: np.ndarray


class StreamOutput(NamedTuple):
    """New frames of one step: ``mel [b, r·(2C + L), m]`` (zero past ``lengths``), ``lengths [b]`` int32."""

    mel: Float[Array, "b f m"]
    lengths: Int[Array, "b"]


@dataclasses.dataclass(frozen=True)
class Token2MelStream:
    """Streaming inference of a flow (:class:`~fmjax.models.flow.CosyVoice2Flow` or CosyVoice3's).

    Attributes:
      model: the flow module (its config fixes ``C``, ``L``, ``r``, ``num_left_chunks``).
      window_tokens: K/V window of the caches in tokens (``r·window_tokens`` frames in the estimator).
      n_steps: ODE steps (the grid given to :meth:`init` must have ``n_steps + 1`` points).
      solver: any fixed-step solver.
      cfg_weight: classifier-free guidance weight (0.7; 0 = no unconditional rows).
    """

    model: nn.Module
    window_tokens: int
    n_steps: int = 10
    solver: str | Solver = "euler"
    cfg_weight: float = 0.7

    def __post_init__(self):
        cfg = self.model.config
        if not isinstance(self.window_tokens, int) or self.window_tokens < cfg.chunk_size:
            raise ValueError(
                f"window_tokens: expected an int >= one chunk ({cfg.chunk_size} tokens), got {self.window_tokens!r}"
            )
        if cfg.num_left_chunks >= 0 and self.window_tokens < (cfg.num_left_chunks + 1) * cfg.chunk_size:
            raise ValueError(
                f"window_tokens: num_left_chunks = {cfg.num_left_chunks} needs at least "
                f"{(cfg.num_left_chunks + 1) * cfg.chunk_size} tokens, got {self.window_tokens}"
            )
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(f"n_steps: expected an int >= 1, got {self.n_steps!r}")
        get_solver(self.solver)

    def prepare_params(self, params) -> dict:
        """The flow's params laid out for streaming (e.g. the U-Net's mid stages split per stage, read in place
        by every evaluation); :meth:`init` and :meth:`step` give the same results with either form, but use
        one form for a whole stream (each form compiles the step once)."""
        return self.model.streaming_params(params)

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def fifo_tokens(self) -> int:
        """FIFO capacity ``2C + L``: held tokens never exceed ``C + L − 1`` before a step appends ``C``."""
        cfg = self.model.config
        return 2 * cfg.chunk_size + cfg.pre_lookahead_len

    @property
    def max_frames_per_step(self) -> int:
        """Frames one step can emit: ``r·(2C + L)`` (a step computes at most the FIFO's tokens)."""
        return self.model.config.token_mel_ratio * self.fifo_tokens

    def state_nbytes(self, batch: int = 1) -> int:
        """Bytes of the per-row stream state (:class:`StreamRows`) for ``batch`` rows; constant over a stream."""
        return cache_nbytes(jax.eval_shape(lambda: self._empty_rows(batch)))

    def _empty_rows(self, b: int) -> StreamRows:
        cfg, model = self.model.config, self.model
        q, r = self.fifo_tokens, cfg.token_mel_ratio
        enc = model.init_encoder_cache(1, self.window_tokens)
        est = init_sampler_caches(
            model.init_estimator_cache(2 if self.cfg_weight != 0.0 else 1, r * self.window_tokens),
            self.n_steps, self.solver,
        )
        rows = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (b, *jnp.shape(a))), (enc, est))
        return StreamRows(
            fifo=jnp.zeros((b, q), jnp.int32),
            fifo_mel=jnp.zeros((b, r * q, cfg.mel_dim), jnp.float32),
            held=jnp.zeros((b,), jnp.int32),
            done=jnp.zeros((b,), jnp.int32),
            prompt_len=jnp.zeros((b,), jnp.int32),
            spks=jnp.zeros((b, cfg.spk_dim), jnp.float32),
            encoder=rows[0],
            estimator=rows[1],
        )

    # ------------------------------------------------------------------------------------------- init
    def init(
        self,
        params,
        embedding,
        prompt_tokens=None,
        prompt_mel=None,
        *,
        prompt_lengths=None,
        grid="cosine",
        noise=None,
        key: Key | None = None,
    ) -> StreamState:
        """Starts ``b`` streams: projects the speaker embeddings and computes every prompt chunk it can.

        Args:
          params: the flow's params (faster: :meth:`prepare_params` of them).
          embedding: ``[b, spk_embed_dim]`` speaker embeddings.
          prompt_tokens: ``[b, p]`` prompt ids (None = no prompt); ``prompt_lengths [b]`` valid ones per row.
          prompt_mel: ``[b, r·p, m]`` the prompt's mel.
          grid: a grid name with ``n_steps`` steps or an ``[n_steps + 1]`` array.
          noise: ``[T, m]`` noise table by absolute frame (default: CosyVoice's fixed noise, 15000 frames).
          key: draw a ``[15000, m]`` table from ``jax.random.normal`` instead.
        """
        cfg = self.model.config
        c, r, m, la = cfg.chunk_size, cfg.token_mel_ratio, cfg.mel_dim, cfg.pre_lookahead_len
        shape = np.shape(embedding)
        b = shape[0] if len(shape) == 2 else -1
        check_speaker_embedding(embedding, b if b > 0 else None, cfg.spk_embed_dim)
        if prompt_tokens is None:
            if prompt_mel is not None or prompt_lengths is not None:
                raise ValueError("prompt_mel/prompt_lengths: given without prompt_tokens")
            prompt_tokens, prompt_mel = np.zeros((b, 0), np.int32), np.zeros((b, 0, m), np.float32)
        prompt_tokens = np.asarray(prompt_tokens)
        if prompt_tokens.ndim != 2 or prompt_tokens.shape[0] != b:
            raise ValueError(f"prompt_tokens: expected shape [{b}, p], got {prompt_tokens.shape}")
        p = prompt_tokens.shape[1]
        lengths = check_lengths(prompt_lengths, b, p, "prompt_lengths")
        check_ids(prompt_tokens, lengths, cfg.vocab_size, "prompt_tokens")
        if tuple(np.shape(prompt_mel)) != (b, r * p, m):
            raise ValueError(f"prompt_mel: expected shape {(b, r * p, m)} ({r} frames per prompt token), "
                             f"got {np.shape(prompt_mel)}")
        grid = jnp.asarray(time_grid(grid, self.n_steps) if isinstance(grid, str) else time_grid(grid), jnp.float32)
        if grid.shape != (self.n_steps + 1,):
            raise ValueError(f"grid: expected {self.n_steps + 1} times for n_steps = {self.n_steps}, got {grid.shape}")
        if key is not None:
            if noise is not None:
                raise ValueError("noise/key: pass at most one of them")
            noise = jax.random.normal(key, (MAX_FRAMES, m), jnp.float32)
        elif noise is None:
            noise = cosyvoice_noise(MAX_FRAMES, m)
        if len(np.shape(noise)) != 2 or np.shape(noise)[1] != m:
            raise ValueError(f"noise: expected a [T, {m}] table, got {np.shape(noise)}")
        spks = self.model.apply(params, jnp.asarray(embedding, jnp.float32), method="speaker")
        rows = _empty_rows(self, b)._replace(spks=spks, prompt_len=jnp.asarray(lengths, jnp.int32))
        state = StreamState(rows, grid, jnp.asarray(noise, jnp.float32), np.zeros((b,), np.int64),
                            np.zeros((b,), bool))
        # Push the prompt through the same step, C tokens at a time, with the prompt tokens after each piece
        # as look-ahead; chunks whose look-ahead reaches past the prompt wait in the FIFO.
        prompt_mel = np.asarray(prompt_mel, np.float32)
        for start in range(0, p, c):
            piece = _window(prompt_tokens, start, c)
            mel = _window(prompt_mel, r * start, r * c)
            ahead = _window(prompt_tokens, start + c, la)
            n = np.clip(lengths - start, 0, c)
            n_ahead = np.clip(lengths - start - c, 0, la)
            state, out = self._call(params, state, piece, n, mel, ahead, n_ahead, np.zeros((b,), bool))
        return state

    # ------------------------------------------------------------------------------------------- step
    def step(
        self, params, state: StreamState, tokens, lookahead=None, *, lengths=None, lookahead_lengths=None,
        final=False,
    ) -> tuple[StreamState, StreamOutput]:
        """Feeds the next tokens of every row and returns the frames that became final.

        Args:
          params: the flow's params.
          state: from :meth:`init` or the previous step.
          tokens: ``[b, <= C]`` ids (``lengths [b]`` valid ones per row, default all).
          lookahead: ``[b, <= L]`` ids of the tokens after them (``lookahead_lengths [b]`` valid, default all);
            they are given again as the start of the next step's ``tokens``. Ignored for final rows.
          final: bool or ``[b]`` bool: these are the row's last tokens; its tail is computed without look-ahead
            and the row ends (later steps must give it no tokens).

        Returns:
          ``(state, StreamOutput(mel [b, r·(2C + L), m], lengths [b]))``. The given ``state`` is consumed: its
          device buffers are donated to the new one (the caches are updated in place).
        """
        cfg = self.model.config
        c, r, la = cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len
        if not isinstance(state, StreamState):
            raise TypeError(f"state: expected a StreamState from init, got {type(state).__name__}")
        b = state.received.shape[0]
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != b or tokens.shape[1] > c:
            raise ValueError(f"tokens: expected shape [{b}, <= {c}] (one chunk per row), got {tokens.shape}")
        n = check_lengths(lengths, b, tokens.shape[1], "lengths")
        final = np.broadcast_to(np.asarray(final, bool), (b,)).copy()
        if np.any(state.ended & (n > 0)):
            raise ValueError(f"tokens: rows {np.flatnonzero(state.ended & (n > 0)).tolist()} have ended (final step "
                             "given earlier) and cannot take more tokens")
        final |= state.ended
        if lookahead is None:
            lookahead = np.zeros((b, 0), np.int32)
        lookahead = np.asarray(lookahead)
        if lookahead.ndim != 2 or lookahead.shape[0] != b or lookahead.shape[1] > la:
            raise ValueError(f"lookahead: expected shape [{b}, <= {la}], got {lookahead.shape}")
        n_ahead = np.where(final, 0, check_lengths(lookahead_lengths, b, lookahead.shape[1], "lookahead_lengths"))
        check_ids(tokens, n, cfg.vocab_size, "tokens")
        check_ids(lookahead, n_ahead, cfg.vocab_size, "lookahead")
        frames = r * c * -(-(state.received + n) // c)
        if frames.max(initial=0) > state.noise.shape[0]:
            raise ValueError(f"tokens: the stream reaches frame {int(frames.max())}, past the noise table "
                             f"({state.noise.shape[0]} frames, prompt included)")
        mel = np.zeros((b, r * c, cfg.mel_dim), np.float32)
        return self._call(params, state, _window(tokens, 0, c), n, mel, _window(lookahead, 0, la), n_ahead, final)

    def _call(self, params, state, tokens, n, mel, ahead, n_ahead, final):
        rows, out = _advance(
            self, params, state.rows, state.grid, state.noise, jnp.asarray(tokens, jnp.int32),
            jnp.asarray(n, jnp.int32), jnp.asarray(mel), jnp.asarray(ahead, jnp.int32),
            jnp.asarray(n_ahead, jnp.int32), jnp.asarray(final),
        )
        state = state._replace(rows=rows, received=state.received + n, ended=state.ended | final)
        return state, out


# ----------------------------------------------------------------------------------------------- the step
@functools.partial(jax.jit, static_argnums=(0, 1))
def _empty_rows(stream: Token2MelStream, b: int) -> StreamRows:
    """A fresh state, built in one compiled pass (eagerly, each cache would be broadcast, then copied)."""
    return stream._empty_rows(b)



@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _advance(stream: Token2MelStream, params, rows, grid, noise, tokens, n, mel, ahead, n_ahead, final):
    """The one compiled step: per row (``vmap``), append the input to the FIFO and compute every ready chunk.

    A single stream skips the ``vmap``: a batched ``while_loop`` selects between the old and new carry of every
    row after each iteration (a pass over all caches), which one row does not need."""
    row_step = functools.partial(_row_step, stream, params, grid, noise)
    args = (rows, tokens, n, mel, ahead, n_ahead, final)
    if tokens.shape[0] == 1:
        new_rows, mel_out, n_out = jax.tree_util.tree_map(
            lambda a: a[None], row_step(*jax.tree_util.tree_map(lambda a: a[0], args))
        )
    else:
        new_rows, mel_out, n_out = jax.vmap(row_step)(*args)
    return new_rows, StreamOutput(mel_out, n_out)


def _row_step(stream: Token2MelStream, params, grid, noise, row: StreamRows, tokens, n, mel, ahead, n_ahead, final):
    """One row: ``tokens [C]`` (``n`` valid), prompt ``mel [r·C, m]``, ``ahead [L]`` (``n_ahead`` valid)."""
    model, cfg = stream.model, stream.model.config
    c, r, la, m = cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len, cfg.mel_dim
    q, out_frames = stream.fifo_tokens, stream.max_frames_per_step
    solver = get_solver(stream.solver)

    fifo = jax.lax.dynamic_update_slice(row.fifo, tokens, (row.held,))  # [q]
    fifo_mel = jax.lax.dynamic_update_slice(row.fifo_mel, mel, (r * row.held, 0))  # [r·q, m]
    held = row.held + n
    ext = jax.lax.dynamic_update_slice(jnp.pad(fifo, (0, la)), ahead, (held,))  # [q + L] FIFO, then look-ahead
    known = held + jnp.where(final, 0, n_ahead)

    def velocity(t, x, cond, cache):
        return model.apply(params, x, cond, t, cache, method="estimate")

    guided = classifier_free_guidance_cached(velocity, stream.cfg_weight) if stream.cfg_weight != 0.0 else velocity

    def ready(carry):
        _, _, held, known, *_ = carry
        return ((held >= c) & (known >= c + la)) | (final & (held > 0))

    def chunk(carry):
        ext, fifo_mel, held, known, done, enc_cache, est_cache, out, n_out = carry
        valid = jnp.minimum(held, c)
        mu, enc_cache = model.apply(
            params, ext[None, :c], valid[None], context=ext[None, c : c + la],
            context_lengths=jnp.clip(known - c, 0, la)[None], cache=enc_cache, method="encode",
        )  # [1, r·C, m]
        first = r * done  # absolute frame of the chunk's first frame
        frame = jnp.arange(r * c)
        prompt_frames = r * row.prompt_len
        prompt = jnp.where((first + frame < prompt_frames)[:, None], fifo_mel[: r * c], 0.0)  # [r·C, m]
        cond = MelCond(mu, row.spks[None], prompt[None], (frame < r * valid).astype(mu.dtype)[None])
        x0 = take_frames(noise, first, r * c)[None]  # [1, r·C, m]
        x1, est_cache = sample_chunk(guided, x0, cond, grid, est_cache, solver)
        skip = jnp.clip(prompt_frames - first, 0, r * c)  # leading prompt frames are not emitted
        emit = (frame >= skip) & (frame < r * valid)
        out = out.at[jnp.where(emit, n_out + frame - skip, out_frames)].set(x1[0], mode="drop")
        n_out = n_out + jnp.sum(emit, dtype=jnp.int32)
        ext = jnp.pad(ext[c:], (0, c))
        fifo_mel = jnp.pad(fifo_mel[r * c :], ((0, r * c), (0, 0)))
        held, known = jnp.maximum(held - c, 0), jnp.maximum(known - c, 0)
        return ext, fifo_mel, held, known, done + c, enc_cache, est_cache, out, n_out

    carry = (ext, fifo_mel, held, known, row.done, row.encoder, row.estimator,
             jnp.zeros((out_frames, m), jnp.float32), jnp.zeros((), jnp.int32))
    ext, fifo_mel, held, _, done, enc_cache, est_cache, out, n_out = jax.lax.while_loop(ready, chunk, carry)
    new_row = row._replace(fifo=ext[:q], fifo_mel=fifo_mel, held=held, done=done, encoder=enc_cache,
                           estimator=est_cache)
    return new_row, out, n_out


# --------------------------------------------------------------------------------------------- host helpers
def _window(a: np.ndarray, start: int, size: int) -> np.ndarray:
    """``a[:, start : start + size]`` zero-padded to ``size`` along axis 1."""
    piece = a[:, start : start + size]
    pad = [(0, 0), (0, size - piece.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(piece, pad)
