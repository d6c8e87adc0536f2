"""Streaming vocoders for :class:`fmjax.pipelines.token2wav.Token2Wav`, batched over rows.

Both follow CosyVoice2's window procedure (:mod:`fmjax.vocoder_stream`): a window is ``[the last n frames of the
previous window, the new frames]`` (just the new frames for a stream's first window); its first ``n·hop`` samples
are Hamming cross-faded with the samples withheld last time, and its last ``n·hop`` samples are withheld until the
next window (:func:`fmjax.vocoder_stream.window_update`, written once for both).

* :class:`HiFTVocoder` -- CosyVoice's HiFT (its params are ``HiFT`` params); its sine noise is keyed by each
  stream's id, so a stream's audio never depends on its row.
* :class:`GriffinLimVocoder` -- Griffin-Lim from zero phase, for flows trained without HiFT weights (no params).

Interface (every cache field is per row; ``active [b]`` selects the rows a call vocodes, the others keep their
state): ``init_cache(batch, key, stream_ids)``, ``window(params, cache, mel [b, t, m], active, first=, final=)``
-> ``(wav [b, N], cache)`` and ``flush(cache, active)`` -> ``(withheld [b, S], cache)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.audio import MelConfig
from fmjax.griffin_lim import griffin_lim, mel_to_magnitude
from fmjax.models.hift import HiFTConfig
from fmjax.typing import Array, Bool, Float, Int, Key
from fmjax.vocoder_stream import _window as _hift_window
from fmjax.vocoder_stream import init_vocoder_cache, window_update

__all__ = ["HiFTVocoder", "GriffinLimVocoder", "GriffinLimCache", "WindowRun"]


@dataclasses.dataclass(frozen=True)
class HiFTVocoder:
    """The streaming HiFT vocoder of :mod:`fmjax.vocoder_stream`.

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

    def init_cache(self, batch: int, key: Key, stream_ids=None):
        """Empty per-row cache; ``stream_ids [b]`` key each stream's sine noise (default ``0 .. b-1``)."""
        return init_vocoder_cache(self.config, batch, key, mel_cache_len=self.mel_cache_len, stream_ids=stream_ids)

    def window(self, params, cache, mel: Float[Array, "b t m"], active: Bool[Array, "b"], *, first: bool,
               final: bool):
        """One window for the ``active`` rows: ``(wav [b, 480·t (∓ S)], cache)``."""
        return _hift_window(self.config, params, cache, mel, None, active, first=first, final=final)

    def flush(self, cache, active):
        """The withheld samples of started rows (no new frames): ``(speech [b, S], cache)``."""
        return _flush(cache, active)


class GriffinLimCache(NamedTuple):
    """State of windowed Griffin-Lim streams (``n`` cached frames, ``S = n·hop`` samples), every field per row.

    Attributes:
      mel: ``[b, n, m]`` the last mel frames of the previous window.
      speech: ``[b, S]`` withheld output samples, cross-faded with the next window.
      frames: ``[b]`` int32 frames consumed; started / finalized: ``[b]`` bool.
    """

    mel: Float[Array, "b n m"]
    speech: Float[Array, "b S"]
    frames: Int[Array, "b"]
    started: Bool[Array, "b"]
    finalized: Bool[Array, "b"]


@dataclasses.dataclass(frozen=True)
class GriffinLimVocoder:
    """Griffin-Lim (:func:`fmjax.griffin_lim.griffin_lim` from zero phase) in HiFT's streaming windows. Needs no
    params (pass ``None``) and no key.

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

    def init_cache(self, batch: int, key: Key | None = None, stream_ids=None) -> GriffinLimCache:
        """An empty cache (``key``/``stream_ids`` unused: Griffin-Lim is deterministic)."""
        n, m = self.mel_cache_len, self.mel_config.n_mels
        return GriffinLimCache(jnp.zeros((batch, n, m)), jnp.zeros((batch, n * self.mel_config.hop)),
                               jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool), jnp.zeros((batch,), bool))

    def window(self, params, cache, mel, active, *, first: bool, final: bool):
        """One window for the ``active`` rows: ``(wav [b, hop·t (∓ S)], cache)``."""
        return _gl_window(self, cache, mel, active, first=first, final=final)

    def flush(self, cache, active):
        return _flush(cache, active)


@functools.partial(jax.jit, static_argnames=("vocoder", "first", "final"))
def _gl_window(vocoder: GriffinLimVocoder, cache, chunk, active, first, final):
    cfg = vocoder.mel_config
    window = chunk if first else jnp.concatenate([cache.mel, chunk], axis=1)  # [b, t, m]
    wav = griffin_lim(mel_to_magnitude(window, cfg), cfg, n_iter=vocoder.n_iter, momentum=vocoder.momentum)
    return window_update(cache, window, wav, active, first=first, final=final)


@jax.jit
def _flush(cache, active):
    return cache.speech, cache._replace(finalized=cache.finalized | active)


class WindowRun:
    """One :class:`~fmjax.pipelines.token2wav.Token2Wav` call's vocoding: new flow frames go into the per-row device
    buffer (``state.mel``, ``state.buffered``); windows of ``V`` frames are vocoded for all rows at once per window kind
    (a row's first window / a later one / a last one of a given length; rows without such a window idle); audio
    pieces are collected per row on the host. ``state`` is a ``Token2WavState``."""

    def __init__(self, t2w, vocoder_params, state, whole: bool = False):
        self.t2w, self.params, self.state, self.whole = t2w, vocoder_params, state, whole
        b = len(state.buffered)
        self.wav = [[] for _ in range(b)]
        self.mel = [[] for _ in range(b)]

    def take(self, mel, lengths: np.ndarray):
        """Appends a flow step's frames ``mel [b, F, m]`` (``lengths [b]`` valid) and vocodes every full window."""
        st = self.state
        buf = _append(st.mel, jnp.asarray(st.buffered, jnp.int32), mel, jnp.asarray(lengths, jnp.int32))
        for i, k in enumerate(lengths):
            if k:
                self.mel[i].append(mel[i, : int(k)])
        self.state = st._replace(mel=buf, buffered=st.buffered + lengths)
        self._drain()

    def _drain(self):
        v = self.t2w.window_frames
        while (self.state.buffered >= v).any():
            ready, started = self.state.buffered >= v, self.state.started.copy()  # groups fixed before any window
            for first in (True, False):
                rows = ready & (started != first)
                if rows.any():
                    self._window(rows, v, first=first, final=False)

    def finish(self):
        """The last window of every row (its remaining ``T mod V`` frames) and the withheld samples."""
        self._drain()
        st = self.state
        tails, started = st.buffered.copy(), st.started.copy()
        for t in sorted(set(tails[tails > 0].tolist())):
            for first in (True, False):
                rows = (tails == t) & (started != first)
                if rows.any():
                    self._window(rows, int(t), first=first, final=True)
        st = self.state
        rest = (tails == 0) & started  # started rows without a last window: emit what they withheld
        if rest.any():
            speech, cache = self.t2w.vocoder.flush(st.vocoder, jnp.asarray(rest))
            speech = np.asarray(speech)
            for i in np.flatnonzero(rest):
                self.wav[i].append(speech[i])
            self.state = st._replace(vocoder=cache)

    def _window(self, rows: np.ndarray, t: int, *, first: bool, final: bool):
        st = self.state
        if first and not final and t < self.t2w.vocoder.mel_cache_len:
            raise ValueError(f"vocoder_frames: a first window needs >= {self.t2w.vocoder.mel_cache_len} frames")
        wav, cache = self.t2w.vocoder.window(self.params, st.vocoder, st.mel[:, :t], jnp.asarray(rows), first=first,
                                             final=final)
        wav = np.asarray(wav)  # the audio: the only thing that comes to the host
        bad = rows & ~np.isfinite(wav).all(axis=1)
        if bad.any():
            raise ValueError(f"mel: rows {np.flatnonzero(bad).tolist()} produced NaN/inf audio (the flow's frames are "
                             "not finite)")
        for i in np.flatnonzero(rows):
            self.wav[i].append(wav[i])
        self.state = st._replace(vocoder=cache, mel=_shift(st.mel, jnp.asarray(rows), t),
                                 buffered=np.where(rows, st.buffered - t, st.buffered),
                                 started=st.started | rows)

    def outputs(self):
        m = self.t2w.vocoder.n_mels
        wav = tuple(np.concatenate([np.zeros((0,), np.float32), *w]).astype(np.float32) for w in self.wav)
        mel = tuple(jnp.concatenate(ms, axis=0) if ms else jnp.zeros((0, m), jnp.float32) for ms in self.mel)
        return wav, mel


@functools.partial(jax.jit, donate_argnums=0)
def _append(buf, start, mel, n):
    """``buf[i, start[i] : start[i] + n[i]] = mel[i, :n[i]]`` for every row (frames past ``n`` dropped)."""
    f = mel.shape[1]
    index = start[:, None] + jnp.arange(f)[None, :]  # [b, F]
    index = jnp.where(jnp.arange(f)[None, :] < n[:, None], index, buf.shape[1])
    return buf.at[jnp.arange(buf.shape[0])[:, None], index].set(mel, mode="drop")


@functools.partial(jax.jit, static_argnums=2, donate_argnums=0)
def _shift(buf, rows, t):
    """Drops the first ``t`` frames of the ``rows`` (bool ``[b]``) of the buffer."""
    shifted = jnp.pad(buf[:, t:], ((0, 0), (0, t), (0, 0)))
    return jnp.where(rows[:, None, None], shifted, buf)
