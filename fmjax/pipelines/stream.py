"""Streaming token-to-mel with fixed-size caches: O(1) work per chunk, output equal to offline chunk-masked inference.

A stream is the sequence ``[prompt tokens | new tokens]`` of one row, cut into **absolute chunks** of ``C`` tokens
(token ``j`` is in chunk ``j // C``), exactly the chunks of the offline chunk masks (CosyVoice2 aligns them the
same way with ``prompt_token_pad``). Chunk ``k`` is computed once: the encoder turns its tokens (plus the next
``L = 3`` look-ahead tokens) into ``mu`` for frames ``[r·k·C, r·(k+1)·C)`` continuing the encoder's caches, and
the whole ODE runs for those frames (:func:`fmjax.streaming.sample_chunk`: one estimator cache per ODE step,
updated in place; CFG by batch doubling) from the noise table at the same absolute frames (shifted by the chunk's
``mu`` where the flow config's source is centred on it: :func:`fmjax.pipelines.common.flow_source`). The prompt mel is the
``prompt`` condition of the prompt's frames; frames of prompt tokens are never emitted.

**Prompt alignment.** Tokens arrive in a per-row FIFO. A chunk is computed as soon as its ``C`` tokens and its
``L`` look-ahead tokens are known (at a final step: as soon as it holds any token). :meth:`Token2MelStream.init`
pushes the prompt through the same jitted step, so every prompt chunk whose look-ahead lies inside the prompt
is computed there, and the rest (at most ``C + L − 1`` prompt tokens) waits in the FIFO. The first
:meth:`Token2MelStream.step` appends its tokens behind them and computes every chunk that became complete: for
``P mod C = q`` that is the chunk holding the prompt's last ``q`` tokens and the first ``C − q`` new ones (it emits
``r·(C − q)`` frames), preceded by the last whole prompt chunk when ``q < L``. So a stream emits ``r·(C − q)``
frames first and ``r·C`` per step after that.

**Batches.** The ``b`` rows of a state are independent streams held in one batched state: every cache keeps a
position per row (``int32[b]``), so rows at different stream positions -- different prompt lengths, lengths, ends
-- share one batched model call per chunk (no ``vmap`` of a single-stream model). Each call gives every row up to
``C`` tokens (``lengths``), its next ``L`` look-ahead tokens (``lookahead_lengths``; fewer only at the end of the
known tokens) and a per-row ``final`` flag. A call loops (``lax.while_loop``) while any row has a chunk ready;
in each iteration the rows with nothing to compute are idle (their chunk has no valid token, so their caches do
not change; see :mod:`fmjax.nn.attention`). A final step computes the row's remaining chunks without look-ahead
(torch's ``finalize``); afterwards the row is ended.

**Host bookkeeping.** The state mirrors the FIFO counts on the host (numpy), so the frames a call emits per row are
known without reading the device, and the stream contracts are checked before anything runs: the look-ahead tokens
a step is given must equal the tokens that later arrive at those positions (the error names the row and the
position); ended rows take no tokens; a state consumed by an earlier step (its buffers were donated) or made by
another stream configuration is rejected.

**State size.** Per row: the FIFO (``2C + L`` tokens and their prompt mel), the encoder caches (K/V rings of
``window_tokens`` tokens) and ``n_steps × stages`` estimator caches (rings of ``r·window_tokens`` frames, CFG rows
included): fixed by ``(window_tokens, n_steps)``, never by the stream's length. With ``num_left_chunks = L >= 0`` a
window of ``(L + 1)·C`` tokens makes every chunk exact; with ``-1`` (all left chunks) chunks are exact while the
stream fits the window (``⌈(P + N) / C⌉·C <= window_tokens``), then attention slides over the last
``window_tokens`` tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.models.protocol import check_flow
from fmjax.nn.tokens import check_speaker_embedding
from fmjax.noise import MAX_FRAMES
from fmjax.pipelines.common import (
    check_finite,
    check_ids,
    check_lengths,
    noise_table,
)
from fmjax.pipelines.stream_host import StreamHost, check_lookahead, host_advance
from fmjax.pipelines.stream_step import advance_rows
from fmjax.samplers import SamplerConfig
from fmjax.streaming import cache_nbytes, init_sampler_caches
from fmjax.timesteps import time_grid
from fmjax.typing import Array, Float, Int, Key

__all__ = ["Token2MelStream", "StreamState", "StreamRows", "StreamOutput", "StreamHost", "advance_rows"]


class StreamRows(NamedTuple):
    """Device state of the streams; every leaf has the row axis first, except the estimator caches, whose leaves
    are ``[n, stages, B, ...]`` with ``B = 2b`` rows (``[cond; null]``) under CFG, else ``b``.

    Attributes:
      fifo: ``[b, 2C + L]`` int32 received tokens not yet computed (the first ``held`` are valid).
      fifo_mel: ``[b, r·(2C + L), m]`` their prompt mel (zeros for new tokens).
      held: ``[b]`` int32 tokens in the FIFO.
      done: ``[b]`` int32 tokens computed (``C ×`` chunks): the absolute index of ``fifo[0]``.
      prompt_len: ``[b]`` int32 prompt tokens ``P``.
      spks: ``[b, spk_dim]`` projected speaker vectors.
      encoder: the encoder (token side) caches, batch ``b``.
      estimator: the estimator caches of every ODE step and stage.
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
    bookkeeping used to validate calls without reading the device.

    Attributes:
      rows: :class:`StreamRows`.
      grid: ``[n + 1]`` ODE time grid (data).
      noise: ``[T, m]`` noise table indexed by absolute frame.
      received: ``[b]`` numpy int, tokens received per row (prompt included).
      ended: ``[b]`` numpy bool, rows whose final step has run.
      host: :class:`StreamHost`.
      owner: the :class:`Token2MelStream` that made the state.
    """

    rows: StreamRows
    grid: Float[Array, "g"]
    noise: Float[Array, "T m"]
    received: np.ndarray
    ended: np.ndarray
    host: StreamHost = None
    owner: Any = None


class StreamOutput(NamedTuple):
    """New frames of one step: ``mel [b, r·(2C + L), m]`` (device; zero past ``lengths``) and ``lengths [b]``
    (numpy int, known on the host without a device read)."""

    mel: Float[Array, "b f m"]
    lengths: np.ndarray


@dataclasses.dataclass(frozen=True)
class Token2MelStream:
    """Streaming inference of a causal flow (:class:`~fmjax.models.flow.CosyVoice2Flow` or CosyVoice3's).

    Attributes:
      model: the flow module (its config fixes ``C``, ``L``, ``r``, ``num_left_chunks``).
      window_tokens: K/V window of the caches in tokens (``r·window_tokens`` frames in the estimator).
      sampler: steps, solver and CFG weight (:class:`~fmjax.samplers.SamplerConfig`; its grid is the default grid
        of :meth:`init`). ``n_steps``, ``solver`` and ``cfg_weight`` may be given instead (or to override it); after
        construction all four fields hold the resolved values. A MeanFlow student (:mod:`fmjax.meanflow`) streams
        the same way at any NFE (default: 2 ``meanflow`` steps, no CFG; CFG asked of it is a ``ValueError``).
    """

    model: Any
    window_tokens: int
    n_steps: int | None = None
    solver: str | None = None
    cfg_weight: float | None = None
    sampler: SamplerConfig | None = None

    def __post_init__(self):
        check_flow(self.model)
        cfg = self.model.config
        if not cfg.causal:
            raise ValueError(f"model: {type(self.model).__name__} is not causal and cannot stream")
        if not isinstance(self.window_tokens, int) or self.window_tokens < cfg.chunk_size:
            raise ValueError(
                f"window_tokens: expected an int >= one chunk ({cfg.chunk_size} tokens), got {self.window_tokens!r}"
            )
        if cfg.num_left_chunks >= 0 and self.window_tokens < (cfg.num_left_chunks + 1) * cfg.chunk_size:
            raise ValueError(
                f"window_tokens: num_left_chunks = {cfg.num_left_chunks} needs at least "
                f"{(cfg.num_left_chunks + 1) * cfg.chunk_size} tokens, got {self.window_tokens}"
            )
        from fmjax.pipelines.token2mel import sampler_config

        sampler = sampler_config(self.sampler, n_steps=self.n_steps, solver=self.solver, cfg_weight=self.cfg_weight,
                                 model=self.model)
        for name, value in (("sampler", sampler), ("n_steps", sampler.n_steps), ("solver", sampler.solver),
                            ("cfg_weight", sampler.cfg_weight)):
            object.__setattr__(self, name, value)

    def prepare_params(self, params) -> dict:
        """The flow's params on the device (the same layout serves offline and streaming; older fmjax layouts are
        converted)."""
        return jax.device_put(self.model.streaming_params(params))

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
        """Bytes of the device stream state (:class:`StreamRows`) for ``batch`` rows; constant over a stream."""
        return cache_nbytes(jax.eval_shape(lambda: self._empty_rows(batch)))

    def _empty_rows(self, b: int) -> StreamRows:
        cfg, model = self.model.config, self.model
        q, r = self.fifo_tokens, cfg.token_mel_ratio
        rows = 2 * b if self.cfg_weight != 0.0 else b
        est = init_sampler_caches(model.init_estimator_cache(rows, r * self.window_tokens), self.n_steps,
                                  self.solver)
        return StreamRows(
            fifo=jnp.zeros((b, q), jnp.int32),
            fifo_mel=jnp.zeros((b, r * q, cfg.mel_dim), jnp.float32),
            held=jnp.zeros((b,), jnp.int32),
            done=jnp.zeros((b,), jnp.int32),
            prompt_len=jnp.zeros((b,), jnp.int32),
            spks=jnp.zeros((b, cfg.spk_dim), jnp.float32),
            encoder=model.init_encoder_cache(b, self.window_tokens),
            estimator=est,
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
        grid=None,
        noise=None,
        key: Key | None = None,
    ) -> StreamState:
        """Starts ``b`` streams: projects the speaker embeddings and computes every prompt chunk it can.

        Args:
          params: the flow's params.
          embedding: ``[b, spk_embed_dim]`` speaker embeddings.
          prompt_tokens: ``[b, p]`` prompt ids (None = no prompt); ``prompt_lengths [b]`` valid ones per row.
          prompt_mel: ``[b, r·p, m]`` the prompt's mel.
          grid: a grid name or an ``[n_steps + 1]`` array (default: the sampler's grid).
          noise: ``[T, m]`` noise table by absolute frame (default: CosyVoice's fixed noise, 15000 frames).
          key: draw a ``[15000, m]`` table from ``jax.random.normal`` instead.
        """
        cfg = self.model.config
        c, r, m, la = cfg.chunk_size, cfg.token_mel_ratio, cfg.mel_dim, cfg.pre_lookahead_len
        shape = np.shape(embedding)
        b = shape[0] if len(shape) == 2 else -1
        check_speaker_embedding(embedding, b if b > 0 else None, cfg.spk_embed_dim)
        check_finite("embedding", embedding)
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
        check_finite("prompt_mel", prompt_mel)
        grid = self.sampler.time_grid() if grid is None else grid
        grid = jnp.asarray(time_grid(grid, self.n_steps) if isinstance(grid, str) else time_grid(grid), jnp.float32)
        if grid.shape != (self.n_steps + 1,):
            raise ValueError(f"grid: expected {self.n_steps + 1} times for n_steps = {self.n_steps}, got {grid.shape}")
        noise = noise_table(noise, key, m, frames=MAX_FRAMES if noise is None else int(np.shape(noise)[0]))
        need = r * c * (-(-int(lengths.max(initial=0)) // c) + 1)  # the prompt's chunks and one chunk of new tokens
        if noise.shape[0] < need:
            raise ValueError(f"noise: a table of {noise.shape[0]} frames cannot hold the prompt's chunks and one more "
                             f"chunk ({need} frames)")
        spks = self.model.apply(params, jnp.asarray(embedding, jnp.float32), method="speaker")
        rows = _empty_rows(self, b)._replace(spks=spks, prompt_len=jnp.asarray(lengths, jnp.int32))
        host = StreamHost(np.zeros((b,), np.int64), np.zeros((b,), np.int64), lengths.astype(np.int64),
                          tuple(np.zeros((0,), np.int64) for _ in range(b)))
        state = StreamState(rows, grid, noise, np.zeros((b,), np.int64), np.zeros((b,), bool), host, self)
        # Push the prompt through the same step, C tokens at a time, with the prompt tokens after each piece
        # as look-ahead; chunks whose look-ahead reaches past the prompt wait in the FIFO.
        prompt_mel = np.asarray(prompt_mel, np.float32)
        for start in range(0, p, c):
            n = np.clip(lengths - start, 0, c)
            n_ahead = np.clip(lengths - start - c, 0, la)
            state, _ = self._call(params, state, _window(prompt_tokens, start, c), n,
                                  _window(prompt_mel, r * start, r * c), _window(prompt_tokens, start + c, la),
                                  n_ahead, np.zeros((b,), bool))
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
            they must be given again, unchanged, as the next tokens (checked). Ignored for final rows.
          final: bool or ``[b]`` bool: these are the row's last tokens; its tail is computed without look-ahead
            and the row ends (later steps must give it no tokens).

        Returns:
          ``(state, StreamOutput(mel [b, r·(2C + L), m], lengths [b]))``. The given ``state`` is consumed: its
          device buffers are donated to the new one (the caches are updated in place).
        """
        cfg = self.model.config
        c, r, la = cfg.chunk_size, cfg.token_mel_ratio, cfg.pre_lookahead_len
        self._check_state(state)
        b = state.received.shape[0]
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != b or tokens.shape[1] > c:
            raise ValueError(f"tokens: expected shape [{b}, <= {c}] (one chunk per row), got {tokens.shape}")
        n = check_lengths(lengths, b, tokens.shape[1], "lengths")
        final = np.asarray(final)
        if final.dtype != bool or final.shape not in ((), (b,)):
            raise TypeError(f"final: expected a bool or [{b}] bools, got {final.dtype} of shape {final.shape}")
        final = np.broadcast_to(final, (b,)).copy()
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
        expected = check_lookahead(state, tokens, n, lookahead, n_ahead)
        state = state._replace(host=state.host._replace(expected=expected))
        mel = np.zeros((b, r * c, cfg.mel_dim), np.float32)
        return self._call(params, state, _window(tokens, 0, c), n, mel, _window(lookahead, 0, la), n_ahead, final)

    def _check_state(self, state) -> None:
        if not isinstance(state, StreamState):
            raise TypeError(f"state: expected a StreamState from Token2MelStream.init, got {type(state).__name__}")
        if state.owner != self:
            raise ValueError("state: made by another stream configuration (model, window, steps, solver or CFG "
                             "weight differ); start a stream with this Token2MelStream's init")
        if state.rows.held.is_deleted():
            raise ValueError("state: already consumed by an earlier step (its device buffers were donated to the "
                             "state that step returned); pass the returned state")

    def _call(self, params, state, tokens, n, mel, ahead, n_ahead, final):
        rows, mel_out = _advance(
            self, params, state.rows, state.grid, state.noise, jnp.asarray(tokens, jnp.int32),
            jnp.asarray(n, jnp.int32), jnp.asarray(mel), jnp.asarray(ahead, jnp.int32),
            jnp.asarray(n_ahead, jnp.int32), jnp.asarray(final),
        )
        host, emitted = host_advance(self.model.config, state.host, n, n_ahead, final)
        state = state._replace(rows=rows, received=state.received + n, ended=state.ended | final, host=host)
        return state, StreamOutput(mel_out, emitted)


# ----------------------------------------------------------------------------------------------- the step
@functools.partial(jax.jit, static_argnums=(0, 1))
def _empty_rows(stream: Token2MelStream, b: int) -> StreamRows:
    """A fresh state, built in one compiled pass (eagerly, each cache would be broadcast, then copied)."""
    return stream._empty_rows(b)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _advance(stream: Token2MelStream, params, rows: StreamRows, grid, noise, tokens, n, mel, ahead, n_ahead, final):
    """The one compiled step (:func:`advance_rows`): ``(rows, mel [b, r·(2C + L), m])``."""
    new_rows, out, _ = advance_rows(stream, params, rows, grid, noise, tokens, n, mel, ahead, n_ahead, final)
    return new_rows, out


# --------------------------------------------------------------------------------------------- host helpers
def _window(a: np.ndarray, start: int, size: int) -> np.ndarray:
    """``a[:, start : start + size]`` zero-padded to ``size`` along axis 1."""
    piece = a[:, start : start + size]
    pad = [(0, 0), (0, size - piece.shape[1])] + [(0, 0)] * (a.ndim - 2)
    return np.pad(piece, pad)
