"""Streaming token2wav: speech tokens in as they arrive, waveform chunks out (CosyVoice2's ``token2wav`` path).

For ``b`` streams held in one batched state (every stage keeps a position per row):

1. **Tokens** are buffered on the host. As soon as a row holds the tokens that complete its next absolute chunk
   (``C`` tokens; fewer for the chunk that finishes the prompt) and the ``L`` look-ahead tokens after them, they go
   to :class:`~fmjax.pipelines.stream.Token2MelStream`, which computes that chunk. One flow call serves every row
   that is ready; a call is made only when some row completes a chunk, so a chunk costs one call however its
   tokens arrived (1 at a time, 7 at a time, all at once).
2. **Mel frames** stay on the device: each row's new frames are appended to a per-row device buffer, and vocoded in
   windows of ``V`` frames (``vocoder_frames``, default the smallest multiple of the flow's ``r·C`` frames that fills
   the vocoder's 8-frame cache) by HiFT (CosyVoice2's window / ``cache_source`` / Hamming cross-fade procedure) or
   Griffin-Lim (:mod:`fmjax.pipelines.vocoders`). The vocoder runs all rows in one batched call per window kind
   (a row's first window, a later window, a last window of a given length), the rows that have no such window
   being idle: no Python loop over rows, no host round trip of the mel. Only the audio comes to the host.
3. :meth:`Token2Wav.finalize` gives the last tokens (the final chunk without look-ahead), vocodes the remaining
   ``T mod V`` frames as the last window and emits the withheld samples.

The vocoder's schedule depends only on the frame count, never on how tokens arrived, so every arrival schedule
gives the audio of :meth:`Token2Wav.offline` (offline chunk-masked :func:`~fmjax.pipelines.token2mel.token2mel`,
then :meth:`Token2Wav.vocode`, the same vocoder procedure), up to the flow's float rounding. ``N`` new tokens give
exactly ``r·N`` frames and ``r·N·480`` samples (``2·N·480`` for CosyVoice2). HiFT's sine noise is keyed by each
stream's id (``stream_ids``, default ``0 .. b-1``), so a stream's audio does not depend on the row it occupies.

**Compiled programs.** A stream compiles the flow's step once (plus, in :meth:`Token2Wav.init`, the flow's state
constructor and the speaker projection) and at most one vocoder window per kind: the first window (``V`` frames),
the steady one (``8 + V``) and one last window per distinct tail ``T mod V`` (the vocoder's filter is non-causal,
so padding the tail would change its samples). All are cached by shape and shared by later streams of the same
batch size.

**State.** :class:`Token2WavState` holds the flow's device state and the mel buffer (donated: each call consumes the
state it is given; keep the returned one) and host-side counts. Buffers are bounded: at most ``C + L - 1`` pending
tokens per row between calls (plus what a call brings) and fewer than ``V`` buffered mel frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.pipelines.common import check_finite, check_ids, check_lengths, noise_table
from fmjax.pipelines.stream import StreamState, Token2MelStream
from fmjax.pipelines.token2mel import token2mel
from fmjax.pipelines.vocoders import GriffinLimVocoder, HiFTVocoder, WindowRun
from fmjax.noise import MAX_FRAMES
from fmjax.typing import Key

__all__ = ["Token2Wav", "Token2WavParams", "Token2WavState", "Token2WavOutput"]


class Token2WavParams(NamedTuple):
    """Params of a :class:`Token2Wav` (from :meth:`Token2Wav.prepare_params`).

    Attributes:
      flow: the flow's params (one layout serves offline and streaming).
      vocoder: HiFT params, or None for Griffin-Lim.
    """

    flow: Any
    vocoder: Any

    @property
    def stream_flow(self):
        """Deprecated alias of :attr:`flow` (the streaming layout of fmjax < 0.2 is gone)."""
        return self.flow


class Token2WavState(NamedTuple):
    """A batch of token2wav streams. ``flow``, ``vocoder`` and ``mel`` are device state (consumed by each call);
    the rest is host-side.

    Attributes:
      flow: the flow's :class:`~fmjax.pipelines.stream.StreamState` (``received`` counts tokens given to it).
      vocoder: the batched vocoder cache (every field per row).
      mel: ``[b, V + r·(2C + L), m]`` device buffer of flow frames not yet vocoded (the first ``buffered[i]``).
      buffered: ``[b]`` frames in ``mel``; started: ``[b]`` bool, the row's first window has been vocoded.
      pending: per-row ``[k]`` int tokens received but not yet given to the flow.
      tokens_in: ``[b]`` new tokens received; frames_out: ``[b]`` frames emitted by the flow; samples_out: ``[b]``
        samples emitted.
      stream_ids: ``[b]`` the streams' ids (they key HiFT's noise).
      finalized: :meth:`Token2Wav.finalize` has run.
    """

    flow: StreamState
    vocoder: Any
    mel: Any
    buffered: np.ndarray
    started: np.ndarray
    pending: tuple
    tokens_in: np.ndarray
    frames_out: np.ndarray
    samples_out: np.ndarray
    stream_ids: np.ndarray
    finalized: bool


class Token2WavOutput(NamedTuple):
    """What one call produced, per row: ``wav`` a tuple of ``[n_i]`` float32 sample arrays (host) and ``mel`` a tuple
    of ``[f_i, m]`` flow frames (device arrays; possibly empty)."""

    wav: tuple
    mel: tuple


@dataclasses.dataclass(frozen=True)
class Token2Wav:
    """Tokens -> waveform, streaming or offline (see the module docstring).

    Attributes:
      stream: the streaming flow (its model, K/V window, ODE steps, solver and CFG weight).
      vocoder: :class:`~fmjax.pipelines.vocoders.HiFTVocoder` or :class:`~fmjax.pipelines.vocoders.GriffinLimVocoder`.
      vocoder_frames: ``V``, mel frames per vocoder window (default: the smallest multiple of ``r·C`` that is
        at least the vocoder's mel cache).
    """

    stream: Token2MelStream
    vocoder: HiFTVocoder | GriffinLimVocoder
    vocoder_frames: int | None = None

    def __post_init__(self):
        if not isinstance(self.stream, Token2MelStream):
            raise TypeError(f"stream: expected a Token2MelStream, got {type(self.stream).__name__}")
        if not isinstance(self.vocoder, (HiFTVocoder, GriffinLimVocoder)):
            raise TypeError(f"vocoder: expected a HiFTVocoder or GriffinLimVocoder, got {type(self.vocoder).__name__}")
        cfg = self.stream.model.config
        if self.vocoder.n_mels != cfg.mel_dim:
            raise ValueError(f"vocoder: takes {self.vocoder.n_mels} mel bins, the flow makes {cfg.mel_dim}")
        v = self.vocoder_frames
        if v is not None and not (isinstance(v, int) and v >= self.vocoder.mel_cache_len):
            raise ValueError(f"vocoder_frames: expected an int >= the vocoder's mel cache "
                             f"({self.vocoder.mel_cache_len} frames), got {v!r}")

    @property
    def window_frames(self) -> int:
        """``V``: mel frames per vocoder window."""
        if self.vocoder_frames is not None:
            return self.vocoder_frames
        unit = self.stream.model.config.token_mel_ratio * self.stream.model.config.chunk_size
        return unit * -(-self.vocoder.mel_cache_len // unit)

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate

    @property
    def samples_per_token(self) -> int:
        """Output samples per new token (``2 · 480`` for CosyVoice2)."""
        return self.stream.model.config.token_mel_ratio * self.vocoder.samples_per_frame

    def prepare_params(self, flow_params, vocoder_params=None) -> Token2WavParams:
        """Bundles the flow's params and the vocoder's (None for Griffin-Lim), placed on the device once (numpy
        params would otherwise be copied at every call)."""
        if isinstance(self.vocoder, HiFTVocoder) and vocoder_params is None:
            raise ValueError("vocoder_params: the HiFT vocoder needs its params (use GriffinLimVocoder without)")
        flow_params = self.stream.prepare_params(flow_params)
        return Token2WavParams(flow_params, jax.device_put(vocoder_params))

    # -------------------------------------------------------------------------------------------- streams
    def init(
        self, params: Token2WavParams, embedding, prompt_tokens=None, prompt_mel=None, *, prompt_lengths=None,
        grid=None, noise=None, key: Key | None = None, vocoder_key: Key | None = None, stream_ids=None,
    ) -> Token2WavState:
        """Starts ``b`` streams (arguments as :meth:`Token2MelStream.init`; ``vocoder_key`` seeds HiFT's sine noise,
        default ``key(0)``; ``stream_ids [b]`` integer ids of the streams, default ``0 .. b-1``: a stream's audio
        depends on its id, not on its row)."""
        _check_params(params)
        m = self.stream.model.config.mel_dim
        noise = noise_table(noise, key, m, frames=MAX_FRAMES if noise is None else int(np.shape(noise)[0]))
        flow = self.stream.init(params.flow, embedding, prompt_tokens, prompt_mel,
                                prompt_lengths=prompt_lengths, grid=grid, noise=noise)
        b = flow.received.shape[0]
        ids = _stream_ids(stream_ids, b)
        vocoder_key = jax.random.key(0) if vocoder_key is None else vocoder_key
        return Token2WavState(
            flow=flow, vocoder=self.vocoder.init_cache(b, vocoder_key, ids),
            mel=jnp.zeros((b, self.window_frames + self.stream.max_frames_per_step, m), jnp.float32),
            buffered=np.zeros((b,), np.int64), started=np.zeros((b,), bool),
            pending=tuple(np.zeros((0,), np.int32) for _ in range(b)),
            tokens_in=np.zeros((b,), np.int64), frames_out=np.zeros((b,), np.int64),
            samples_out=np.zeros((b,), np.int64), stream_ids=ids, finalized=False,
        )

    def step(self, params: Token2WavParams, state: Token2WavState, tokens, *, lengths=None):
        """Feeds the next tokens of every row (``[b, n]`` ids, ``lengths [b]`` valid per row, default all ``n``;
        any number per call) and returns ``(state, Token2WavOutput)`` with the audio that became ready."""
        _check_params(params)
        _check_state(state)
        state = self._receive(state, tokens, lengths, allow_empty=False)
        return self._advance(params, state, final=False)

    def finalize(self, params: Token2WavParams, state: Token2WavState, tokens=None, *, lengths=None):
        """Optionally feeds last tokens, then flushes every row: the flow's final chunk (no look-ahead), the
        vocoder's last window and its withheld samples. The stream ends (later calls raise)."""
        _check_params(params)
        _check_state(state)
        if tokens is not None:
            state = self._receive(state, tokens, lengths, allow_empty=True)
        return self._advance(params, state, final=True)

    def _receive(self, state, tokens, lengths, *, allow_empty):
        cfg, b = self.stream.model.config, len(state.pending)
        if isinstance(tokens, jax.core.Tracer):
            raise TypeError("tokens: expected concrete ids (the pipeline buffers them on the host), got a tracer")
        arr = np.asarray(tokens)
        if arr.ndim != 2 or arr.shape[0] != b:
            raise ValueError(f"tokens: expected shape [{b}, n] (one row per stream), got {arr.shape}")
        n = check_lengths(lengths, b, arr.shape[1], "lengths")
        if not allow_empty and not n.any():
            raise ValueError(f"tokens: empty chunk (shape {arr.shape}, lengths {n.tolist()}); give at least one "
                             "token, or call finalize to end the streams")
        check_ids(arr, n, cfg.vocab_size, "tokens")
        pending = tuple(np.concatenate([p, arr[i, : n[i]].astype(np.int32)]) for i, p in enumerate(state.pending))
        return state._replace(pending=pending, tokens_in=state.tokens_in + n)

    def _advance(self, params, state: Token2WavState, *, final: bool):
        """Runs the flow for every chunk that is complete (all remaining ones when ``final``), appends its frames to
        the device buffer and vocodes every full window (and, when ``final``, the rest)."""
        cfg = self.stream.model.config
        c, la, b = cfg.chunk_size, cfg.pre_lookahead_len, len(state.pending)
        flow, pending = state.flow, list(state.pending)
        run = WindowRun(self, params.vocoder, state)

        def call(feed, ahead, last):
            nonlocal flow
            tok, look = np.zeros((b, c), np.int32), np.zeros((b, la), np.int32)
            for i in range(b):  # host-side token bookkeeping only
                tok[i, : feed[i]] = pending[i][: feed[i]]
                look[i, : ahead[i]] = pending[i][feed[i] : feed[i] + ahead[i]]
                pending[i] = pending[i][feed[i] :]
            flow, out = self.stream.step(params.flow, flow, tok, look, lengths=feed, lookahead_lengths=ahead,
                                         final=last)
            run.take(out.mel, out.lengths)

        while True:  # every chunk whose tokens and look-ahead are known
            need = c - flow.received % c  # tokens up to the end of the row's next absolute chunk
            ready = np.array([len(p) for p in pending]) >= need + la
            if not ready.any():
                break
            call(np.where(ready, need, 0), np.where(ready, la, 0), np.zeros((b,), bool))
        while final and not flow.ended.all():  # the rest, with whatever look-ahead is known, then the final step
            need = c - flow.received % c
            have = np.array([len(p) for p in pending])
            feed = np.where(flow.ended, 0, np.minimum(need, have))
            last = ~flow.ended & (feed == have)
            call(feed, np.where(last | flow.ended, 0, np.minimum(la, have - feed)), last)
        if final:
            run.finish()
        wav, mel = run.outputs()
        state = run.state._replace(flow=flow, pending=tuple(pending), finalized=final,
                                   frames_out=state.frames_out + [m.shape[0] for m in mel],
                                   samples_out=state.samples_out + [w.shape[0] for w in wav])
        return state, Token2WavOutput(wav, mel)

    # -------------------------------------------------------------------------------------------- offline
    def vocode(self, params: Token2WavParams, mel, *, lengths=None, vocoder_key: Key | None = None,
               stream_ids=None) -> tuple:
        """The streams' vocoder procedure on whole mels ``[b, t, m]`` (the first ``lengths[i]`` frames of row
        ``i``): windows of ``V`` frames, then the rest, batched over rows. Returns a tuple of ``[480·lengths[i]]``
        waveforms."""
        _check_params(params)
        if not hasattr(mel, "shape"):
            raise TypeError(f"mel: expected an array [b, t, {self.vocoder.n_mels}], got {type(mel).__name__}")
        if len(mel.shape) != 3 or mel.shape[-1] != self.vocoder.n_mels:
            raise ValueError(f"mel: expected shape [b, t, {self.vocoder.n_mels}] (channels last), "
                             f"got {tuple(mel.shape)}")
        b = mel.shape[0]
        n = check_lengths(lengths, b, mel.shape[1], "lengths")
        check_finite("mel", mel)
        ids = _stream_ids(stream_ids, b)
        vocoder_key = jax.random.key(0) if vocoder_key is None else vocoder_key
        state = Token2WavState(None, self.vocoder.init_cache(b, vocoder_key, ids), jnp.array(mel, jnp.float32, copy=True),
                               n.copy(), np.zeros((b,), bool), (), np.zeros(b, np.int64), np.zeros(b, np.int64),
                               np.zeros(b, np.int64), ids, False)
        run = WindowRun(self, params.vocoder, state, whole=True)
        run.finish()
        return run.outputs()[0]

    def offline(
        self, params: Token2WavParams, tokens, embedding, *, lengths=None, prompt_tokens=None, prompt_mel=None,
        prompt_lengths=None, grid=None, noise=None, key: Key | None = None, vocoder_key: Key | None = None,
        stream_ids=None,
    ):
        """Offline chunk-masked token2mel (:func:`~fmjax.pipelines.token2mel.token2mel` with ``streaming=True``, the
        stream's sampler and its noise by absolute frame), then :meth:`vocode`.

        Returns:
          ``(wav, mel)``: a tuple of ``[r·480·lengths[i]]`` waveforms and the
          :class:`~fmjax.pipelines.token2mel.Token2MelOutput` ``(mel [b, r·n, m], lengths [b], aux)``.
        """
        _check_params(params)
        m = self.stream.model.config.mel_dim
        noise = noise_table(noise, key, m, frames=MAX_FRAMES if noise is None else int(np.shape(noise)[0]))
        s = self.stream
        sampler = s.sampler if grid is None else dataclasses.replace(s.sampler, grid=grid)
        out = token2mel(s.model, params.flow, tokens, embedding, lengths=lengths, prompt_tokens=prompt_tokens,
                        prompt_mel=prompt_mel, prompt_lengths=prompt_lengths, streaming=True, sampler=sampler,
                        noise=noise)
        wav = self.vocode(params, out.mel, lengths=np.asarray(out.lengths), vocoder_key=vocoder_key,
                          stream_ids=stream_ids)
        return wav, out


# ------------------------------------------------------------------------------------------------- checks
def _stream_ids(stream_ids, b: int) -> np.ndarray:
    ids = np.arange(b) if stream_ids is None else np.asarray(stream_ids)
    if ids.shape != (b,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"stream_ids: expected [{b}] integer ids, got shape {ids.shape} dtype {ids.dtype}")
    if len(set(ids.tolist())) != b:
        raise ValueError(f"stream_ids: expected distinct ids (each keys its stream's noise), got {ids.tolist()}")
    return ids.astype(np.int64)


def _check_params(params):
    if not isinstance(params, Token2WavParams):
        raise TypeError(f"params: expected Token2WavParams from Token2Wav.prepare_params, got {type(params).__name__}")


def _check_state(state):
    if not isinstance(state, Token2WavState):
        raise TypeError(f"state: expected a Token2WavState from Token2Wav.init, got {type(state).__name__}")
    if state.finalized:
        raise ValueError("state: this stream was already finalized; start a new one with Token2Wav.init")
    if state.flow.rows.held.is_deleted() or state.mel.is_deleted():
        raise ValueError("state: already consumed by an earlier step (its device buffers were donated); pass the "
                         "state that step returned")
