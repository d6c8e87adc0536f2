"""Streaming token2wav: speech tokens in as they arrive, waveform chunks out (CosyVoice2's ``token2wav`` path).

Per row (``b`` rows share the flow's compiled step, each with its own positions):

1. **Tokens** are buffered on the host. As soon as a row holds the tokens that complete its next absolute chunk
   (``C`` tokens; fewer for the chunk that finishes the prompt) and the ``L`` look-ahead tokens after them, they go
   to :class:`~fmjax.token2mel_stream.Token2MelStream`, which computes that chunk. One flow call serves every row
   that is ready; a call is made only when some row completes a chunk, so a chunk costs one call however its
   tokens arrived (1 at a time, 7 at a time, all at once).
2. **Mel frames** from the flow are buffered and vocoded in windows of ``V`` frames (``vocoder_frames``, default the
   smallest multiple of the flow's ``r·C`` frames that fills the vocoder's 8-frame cache): HiFT with CosyVoice2's
   window / ``cache_source`` / Hamming cross-fade procedure (:mod:`fmjax.vocoder_stream`), or Griffin-Lim
   (:class:`GriffinLimVocoder`) in the same windows, for flows trained without HiFT weights.
3. :meth:`Token2Wav.finalize` gives the last tokens (the final chunk without look-ahead), vocodes the remaining
   ``T mod V`` frames as the last window and emits the withheld samples.

The vocoder's schedule depends only on the frame count, never on how tokens arrived, so every arrival schedule
gives the audio of :meth:`Token2Wav.offline` (offline chunk-masked :func:`~fmjax.token2mel.token2mel`, then
:meth:`Token2Wav.vocode`, the same vocoder procedure), up to the flow's float rounding. ``N`` new tokens give
exactly ``r·N`` frames and ``r·N·480`` samples (``2·N·480`` for CosyVoice2).

**Compiled programs.** A stream compiles the flow's step once (plus, in :meth:`Token2Wav.init`, the flow's state
constructor once and the speaker projection) and the vocoder window at most three times per row: the first window
(``V`` frames), the steady one (``8 + V``) and the last one (``8 + T mod V``; none when ``V`` divides ``T``;
a single first-and-last window of ``T`` frames when ``T <= V``). All are cached by shape and shared by the rows
and by later streams with the same batch size: a batch compiles ``2 +`` (distinct tails ``T mod V``) vocoder
windows, and a later stream only compiles a last window for a tail length not seen before (the vocoder's filter
is non-causal, so padding the tail would change its samples).

**Batches.** The flow runs rows lock-step in one call; the vocoder runs each row separately with its own cache
(batch 1; rows reach frame positions at different times). Row ``i`` vocodes with ``fold_in(vocoder_key, i)``.

**State.** :class:`Token2WavState` holds the flow's device state (donated: each call consumes the state it is
given; keep the returned one) and host-side buffers. Positions and buffers are bounded: at most ``C + L - 1``
pending tokens per row between calls (plus what a call brings) and fewer than ``V`` mel frames.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.audio import MelConfig
from fmjax.griffin_lim import griffin_lim, mel_to_magnitude
from fmjax.models.hift import HiFTConfig
from fmjax.noise import MAX_FRAMES
from fmjax.token2mel import check_ids, check_lengths, token2mel
from fmjax.token2mel_stream import StreamState, Token2MelStream
from fmjax.typing import Array, Float, Key
from fmjax.vocoder_stream import init_vocoder_cache, vocoder_finalize, vocoder_step

__all__ = [
    "HiFTVocoder",
    "GriffinLimVocoder",
    "GriffinLimCache",
    "Token2Wav",
    "Token2WavParams",
    "Token2WavState",
    "Token2WavOutput",
]


# ------------------------------------------------------------------------------------------------- vocoders
@dataclasses.dataclass(frozen=True)
class HiFTVocoder:
    """The streaming HiFT vocoder of :mod:`fmjax.vocoder_stream` for one row (its params are ``HiFT`` params).

    Attributes:
      config: the HiFT sizes (CosyVoice2's by default).
      mel_cache_len: mel frames carried into the next window (8 in CosyVoice2).
    """

    config: HiFTConfig = HiFTConfig()
    mel_cache_len: int = 8

    @property
    def n_mels(self) -> int:
        return self.config.in_channels

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def samples_per_frame(self) -> int:
        return self.config.upsample_factor

    def init_cache(self, key: Key):
        return init_vocoder_cache(self.config, 1, key, mel_cache_len=self.mel_cache_len)

    def step(self, params, cache, mel: Float[Array, "1 c m"]):
        """``(wav [1, 480·c (− S for the first)], cache)``."""
        return vocoder_step(self.config, params, cache, mel)

    def finalize(self, params, cache, mel: Float[Array, "1 c m"] | None):
        """The last window (if any) and the withheld samples: ``(wav [1, N], cache)``."""
        return vocoder_finalize(self.config, params, cache, mel)


class GriffinLimCache(NamedTuple):
    """State of a windowed Griffin-Lim stream (one row; ``n`` cached frames, ``S = n·hop`` samples).

    Attributes:
      mel: ``[1, n, m]`` the last mel frames of the previous window.
      speech: ``[1, S]`` withheld output samples, cross-faded with the next window.
      started: a window has been vocoded (host bool).
    """

    mel: Float[Array, "1 n m"]
    speech: Float[Array, "1 S"]
    started: bool


@dataclasses.dataclass(frozen=True)
class GriffinLimVocoder:
    """Griffin-Lim (:func:`fmjax.griffin_lim.griffin_lim` from zero phase) in HiFT's streaming windows: a window is
    ``[last n frames, chunk]``, its first ``n·hop`` samples are Hamming cross-faded with the samples withheld from
    the previous window, its last ``n·hop`` samples are withheld. Needs no params (pass ``None``).

    Attributes:
      mel_config: the log-mel front-end the flow was trained on (24 kHz, hop 480, 80 bins by default).
      n_iter: Griffin-Lim iterations per window.
      momentum: fast Griffin-Lim momentum (0 = classic).
      mel_cache_len: frames of context carried into the next window.
    """

    mel_config: MelConfig = MelConfig()
    n_iter: int = 32
    momentum: float = 0.99
    mel_cache_len: int = 8

    def __post_init__(self):
        if not (isinstance(self.n_iter, int) and self.n_iter >= 0):
            raise ValueError(f"n_iter: expected an int >= 0, got {self.n_iter!r}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.mel_cache_len, int) and self.mel_cache_len >= 1):
            raise ValueError(f"mel_cache_len: expected an int >= 1, got {self.mel_cache_len!r}")

    @property
    def n_mels(self) -> int:
        return self.mel_config.n_mels

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def samples_per_frame(self) -> int:
        return self.mel_config.hop

    def init_cache(self, key: Key | None = None) -> GriffinLimCache:
        """An empty cache (``key`` is unused: Griffin-Lim starts from zero phase)."""
        n, m = self.mel_cache_len, self.mel_config.n_mels
        return GriffinLimCache(jnp.zeros((1, n, m)), jnp.zeros((1, n * self.mel_config.hop)), False)

    def step(self, params, cache: GriffinLimCache, mel: Float[Array, "1 c m"]):
        """``(wav [1, hop·c (− S for the first)], cache)``; the first chunk needs ``>= mel_cache_len`` frames."""
        if not cache.started and mel.shape[1] < self.mel_cache_len:
            raise ValueError(f"mel: the first chunk needs at least {self.mel_cache_len} frames, got {mel.shape[1]}")
        wav, tail, last = _gl_window(self, cache.mel, cache.speech, mel, first=not cache.started, final=False)
        return wav, GriffinLimCache(last, tail, True)

    def finalize(self, params, cache: GriffinLimCache, mel: Float[Array, "1 c m"] | None):
        """The last window (if any) and the withheld samples."""
        if mel is None:
            return (cache.speech if cache.started else cache.speech[:, :0]), cache
        wav, tail, last = _gl_window(self, cache.mel, cache.speech, mel, first=not cache.started, final=True)
        return wav, GriffinLimCache(last, tail, True)


@functools.partial(jax.jit, static_argnames=("vocoder", "first", "final"))
def _gl_window(vocoder: GriffinLimVocoder, cache_mel, cache_speech, chunk, first, final):
    """One Griffin-Lim window: ``(emitted [1, N], withheld [1, S], last frames [1, n, m])``."""
    cfg, n = vocoder.mel_config, vocoder.mel_cache_len
    samples = n * cfg.hop
    window = chunk if first else jnp.concatenate([cache_mel, chunk], axis=1)  # [1, t, m]
    wav = griffin_lim(mel_to_magnitude(window, cfg), cfg, n_iter=vocoder.n_iter, momentum=vocoder.momentum)  # [1, L]
    if not first:
        w = jnp.asarray(np.hamming(2 * samples), jnp.float32)
        wav = wav.at[:, :samples].set(wav[:, :samples] * w[:samples] + cache_speech * w[samples:])
    length = wav.shape[1]
    emitted = wav if final else wav[:, : length - samples]
    return emitted, wav[:, max(length - samples, 0) :], window[:, max(window.shape[1] - n, 0) :]


# ------------------------------------------------------------------------------------------------- pipeline
class Token2WavParams(NamedTuple):
    """Params of a :class:`Token2Wav` (from :meth:`Token2Wav.prepare_params`).

    Attributes:
      flow: the flow's params (stacked form: the offline path needs it).
      stream_flow: the same, laid out for streaming (:meth:`Token2MelStream.prepare_params`).
      vocoder: HiFT params, or None for Griffin-Lim.
    """

    flow: Any
    stream_flow: Any
    vocoder: Any


class Token2WavState(NamedTuple):
    """A batch of token2wav streams. ``flow`` is device state (consumed by each call); the rest is host-side.

    Attributes:
      flow: the flow's :class:`~fmjax.token2mel_stream.StreamState` (``received`` counts tokens given to it).
      vocoder: per-row vocoder caches.
      pending: per-row ``[k]`` int tokens received but not yet given to the flow.
      mel: per-row ``[f, m]`` flow frames not yet vocoded (``f < V``).
      tokens_in: ``[b]`` new tokens received; frames_out: ``[b]`` frames emitted by the flow; samples_out: ``[b]``
        samples emitted.
      finalized: :meth:`Token2Wav.finalize` has run.
    """

    flow: StreamState
    vocoder: tuple
    pending: tuple
    mel: tuple
    tokens_in: np.ndarray
    frames_out: np.ndarray
    samples_out: np.ndarray
    finalized: bool


class Token2WavOutput(NamedTuple):
    """What one call produced, per row: ``wav`` a tuple of ``[n_i]`` float32 sample arrays and ``mel`` a tuple of
    ``[f_i, m]`` float32 flow frames (possibly empty)."""

    wav: tuple
    mel: tuple


@dataclasses.dataclass(frozen=True)
class Token2Wav:
    """Tokens -> waveform, streaming or offline (see the module docstring).

    Attributes:
      stream: the streaming flow (its model, K/V window, ODE steps, solver and CFG weight).
      vocoder: :class:`HiFTVocoder` or :class:`GriffinLimVocoder`.
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
        """Bundles the flow's params (both layouts) and the vocoder's (None for Griffin-Lim), placed on the device
        once (numpy params would otherwise be copied at every call)."""
        if isinstance(self.vocoder, HiFTVocoder) and vocoder_params is None:
            raise ValueError("vocoder_params: the HiFT vocoder needs its params (use GriffinLimVocoder without)")
        flow_params, vocoder_params = jax.device_put((flow_params, vocoder_params))
        return Token2WavParams(flow_params, self.stream.prepare_params(flow_params), vocoder_params)

    # -------------------------------------------------------------------------------------------- streams
    def init(
        self, params: Token2WavParams, embedding, prompt_tokens=None, prompt_mel=None, *, prompt_lengths=None,
        grid="cosine", noise=None, key: Key | None = None, vocoder_key: Key | None = None,
    ) -> Token2WavState:
        """Starts ``b`` streams (arguments as :meth:`Token2MelStream.init`; ``prompt_mel [b, r·p, m]`` is checked
        for its bins and for NaN/inf; ``vocoder_key`` seeds HiFT's sine noise, default ``key(0)``)."""
        _check_params(params)
        _check_prompt_mel(prompt_mel, self.stream.model.config.mel_dim)
        noise = _noise_table(noise, key, self.stream.model.config.mel_dim)
        flow = self.stream.init(params.stream_flow, embedding, prompt_tokens, prompt_mel,
                                prompt_lengths=prompt_lengths, grid=grid, noise=noise)
        b = flow.received.shape[0]
        vocoder_key = jax.random.key(0) if vocoder_key is None else vocoder_key
        m = self.stream.model.config.mel_dim
        return Token2WavState(
            flow=flow,
            vocoder=tuple(self.vocoder.init_cache(jax.random.fold_in(vocoder_key, i)) for i in range(b)),
            pending=tuple(np.zeros((0,), np.int32) for _ in range(b)),
            mel=tuple(np.zeros((0, m), np.float32) for _ in range(b)),
            tokens_in=np.zeros((b,), np.int64), frames_out=np.zeros((b,), np.int64),
            samples_out=np.zeros((b,), np.int64), finalized=False,
        )

    def step(self, params: Token2WavParams, state: Token2WavState, tokens, *, lengths=None):
        """Feeds the next tokens of every row (``[b, n]`` ids, ``lengths [b]`` valid per row, default all ``n``;
        any number per call) and returns ``(state, Token2WavOutput)`` with the audio that became ready."""
        _check_state(state)
        state = self._receive(state, tokens, lengths, allow_empty=False)
        return self._advance(params, state, final=False)

    def finalize(self, params: Token2WavParams, state: Token2WavState, tokens=None, *, lengths=None):
        """Optionally feeds last tokens, then flushes every row: the flow's final chunk (no look-ahead), the
        vocoder's last window and its withheld samples. The stream ends (later calls raise)."""
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
        """Runs the flow for every chunk that is complete (all remaining ones when ``final``), then the vocoder."""
        cfg = self.stream.model.config
        c, la = cfg.chunk_size, cfg.pre_lookahead_len
        flow, pending, b = state.flow, list(state.pending), len(state.pending)
        new_mel = [[] for _ in range(b)]

        def call(feed, ahead, last):
            nonlocal flow
            tok, look = np.zeros((b, c), np.int32), np.zeros((b, la), np.int32)
            for i in range(b):
                tok[i, : feed[i]] = pending[i][: feed[i]]
                look[i, : ahead[i]] = pending[i][feed[i] : feed[i] + ahead[i]]
                pending[i] = pending[i][feed[i] :]
            flow, out = self.stream.step(params.stream_flow, flow, tok, look, lengths=feed, lookahead_lengths=ahead,
                                         final=last)
            mel, counts = np.asarray(out.mel), np.asarray(out.lengths)
            for i in range(b):
                new_mel[i].append(mel[i, : counts[i]])

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

        mel = [np.concatenate([state.mel[i], *new_mel[i]]) for i in range(b)]
        caches, mel_left, wav = self._vocode_rows(params.vocoder, state.vocoder, mel, final)
        out = Token2WavOutput(tuple(wav), tuple(np.concatenate([np.zeros((0, cfg.mel_dim), np.float32), *m])
                                                for m in new_mel))
        state = state._replace(
            flow=flow, vocoder=caches, pending=tuple(pending), mel=mel_left, finalized=final,
            frames_out=state.frames_out + [len(m) for m in out.mel],
            samples_out=state.samples_out + [len(w) for w in wav],
        )
        return state, out

    def _vocode_rows(self, vocoder_params, caches, mel, final: bool):
        """Per row: every whole window of ``V`` buffered frames; when ``final`` also the rest and the withheld tail."""
        v = self.window_frames
        caches, left, wav = list(caches), [], []
        for i, frames in enumerate(mel):
            _check_frames(frames, self.vocoder.n_mels, f"mel (row {i})")
            pieces, start = [], 0
            while len(frames) - start >= v:
                window = jnp.asarray(frames[None, start : start + v])  # [1, V, m]
                piece, caches[i] = self.vocoder.step(vocoder_params, caches[i], window)
                pieces.append(np.asarray(piece[0]))
                start += v
            if final:
                rest = jnp.asarray(frames[None, start:]) if start < len(frames) else None
                piece, caches[i] = self.vocoder.finalize(vocoder_params, caches[i], rest)
                pieces.append(np.asarray(piece[0]))
                start = len(frames)
            left.append(frames[start:])
            wav.append(np.concatenate([np.zeros((0,), np.float32), *pieces]).astype(np.float32))
        return tuple(caches), tuple(left), wav

    # -------------------------------------------------------------------------------------------- offline
    def vocode(self, params: Token2WavParams, mel, *, lengths=None, vocoder_key: Key | None = None) -> tuple:
        """The streams' vocoder procedure on whole mels ``[b, t, m]`` (the first ``lengths[i]`` frames of row
        ``i``): windows of ``V`` frames, then the rest. Returns a tuple of ``[480·lengths[i]]`` waveforms."""
        if not hasattr(mel, "shape"):
            raise TypeError(f"mel: expected an array [b, t, {self.vocoder.n_mels}], got {type(mel).__name__}")
        if len(mel.shape) != 3 or mel.shape[-1] != self.vocoder.n_mels:
            raise ValueError(f"mel: expected shape [b, t, {self.vocoder.n_mels}] (channels last), "
                             f"got {tuple(mel.shape)}")
        mel = np.asarray(mel, np.float32)
        b = mel.shape[0]
        n = check_lengths(lengths, b, mel.shape[1], "lengths")
        rows = [mel[i, : n[i]] for i in range(b)]
        vocoder_key = jax.random.key(0) if vocoder_key is None else vocoder_key
        caches = [self.vocoder.init_cache(jax.random.fold_in(vocoder_key, i)) for i in range(b)]
        return tuple(self._vocode_rows(params.vocoder, caches, rows, True)[2])

    def offline(
        self, params: Token2WavParams, tokens, embedding, *, lengths=None, prompt_tokens=None, prompt_mel=None,
        prompt_lengths=None, grid="cosine", noise=None, key: Key | None = None, vocoder_key: Key | None = None,
    ):
        """Offline chunk-masked token2mel (:func:`~fmjax.token2mel.token2mel` with ``streaming=True``, the stream's
        steps, solver, CFG weight and noise by absolute frame), then :meth:`vocode`.

        Returns:
          ``(wav, mel)``: a tuple of ``[r·480·lengths[i]]`` waveforms and the
          :class:`~fmjax.token2mel.Token2MelOutput` ``(mel [b, r·n, m], lengths [b], aux)``.
        """
        _check_params(params)
        _check_prompt_mel(prompt_mel, self.stream.model.config.mel_dim)
        noise = _noise_table(noise, key, self.stream.model.config.mel_dim)
        s = self.stream
        out = token2mel(s.model, params.flow, tokens, embedding, lengths=lengths, prompt_tokens=prompt_tokens,
                        prompt_mel=prompt_mel, prompt_lengths=prompt_lengths, streaming=True, grid=grid,
                        n_steps=s.n_steps, solver=s.solver, cfg_weight=s.cfg_weight, noise=noise)
        wav = self.vocode(params, out.mel, lengths=np.asarray(out.lengths), vocoder_key=vocoder_key)
        return wav, out


# ------------------------------------------------------------------------------------------------- checks
def _check_params(params):
    if not isinstance(params, Token2WavParams):
        raise TypeError(f"params: expected Token2WavParams from Token2Wav.prepare_params, got {type(params).__name__}")


def _check_state(state):
    if not isinstance(state, Token2WavState):
        raise TypeError(f"state: expected a Token2WavState from Token2Wav.init, got {type(state).__name__}")
    if state.finalized:
        raise ValueError("state: this stream was already finalized; start a new one with Token2Wav.init")
    if state.flow.rows.held.is_deleted():
        raise ValueError("state: already consumed by an earlier step (its device buffers were donated); pass the "
                         "state that step returned")


def _check_frames(mel, n_mels: int, name: str):
    if mel.ndim != 2 or mel.shape[1] != n_mels:
        raise ValueError(f"{name}: expected shape [t, {n_mels}], got {mel.shape}")
    if not np.isfinite(mel).all():
        raise ValueError(f"{name}: the flow produced NaN or inf values")


def _check_prompt_mel(prompt_mel, m: int):
    """Bins and finiteness of a prompt mel (its full shape is checked by the flow against the prompt tokens)."""
    if prompt_mel is None:
        return
    shape = np.shape(prompt_mel)
    if len(shape) != 3 or shape[-1] != m:
        raise ValueError(f"prompt_mel: expected shape [b, frames, {m}] ({m} mel bins, channels last), got {shape}")
    if not np.isfinite(np.asarray(prompt_mel)).all():
        raise ValueError("prompt_mel: contains NaN or inf values")


def _noise_table(noise, key, m: int):
    """The ``[T, m]`` noise table a stream and its offline twin share (None: CosyVoice's fixed noise)."""
    if key is not None:
        if noise is not None:
            raise ValueError("noise/key: pass at most one of them")
        return jax.random.normal(key, (MAX_FRAMES, m), jnp.float32)
    return noise
