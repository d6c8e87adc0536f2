"""Streaming HiFT vocoding as CosyVoice2 does it (SPEC §7.1 steps 3-6), with an explicit fixed-size cache.

Each call vocodes a window = [last ``n = 8`` mel frames of the previous window, the new chunk]:

1. The source of the window is generated from its own f0, then its first ``S = 480·n`` samples are replaced
   by the last ``S`` source samples of the previous window (``cache_source``, against glitches).
2. The first ``S`` output samples are cross-faded with the ``S`` samples withheld last time, with a Hamming
   window of ``2S`` (``np.hamming``): ``y[:S]·w[:S] + withheld·w[S:]``. (Its two halves sum to about 1.08,
   not 1: the original's fade slightly boosts coherent overlaps.)
3. A non-final step emits all but the last ``S`` samples and withholds those; :func:`vocoder_finalize`
   emits everything. Over a stream, exactly ``480`` samples come out per mel frame.

The first window has no previous one (no prefix, no fade) and must hold at least ``n`` frames. The sine
noise is drawn by absolute frame position and by the stream's id from the key in the cache, so every frame sees
the noise an offline :func:`~fmjax.models.hift.hift_inference` with the same key and ``stream_ids`` would, and a
stream's audio does not depend on its row in a batch. The SineGen2 phase, however, restarts at every window, as in
the original, so voiced parts are not sample-identical to an offline call.

**Rows.** Every field of the cache is per row (positions ``int32[b]``), so rows of one cache may stand at different
points of their streams. A step vocodes the rows marked ``active`` (default all) and leaves the others' state
unchanged; the active rows of one call must all be at their first window or all past it (the window's shape).

Static shapes: the cache is a NamedTuple of fixed-size arrays, and the step is jitted per window length.
A stream of equal chunks compiles three programs: the first window (``c``), the steady window (``n + c``)
and the final window (``n + c_final``). The final chunk gets its own compiled shape rather than padding
plus a length: the filter is non-causal, and its edges (zero-padded convs, reflect-padded STFT, the reflection
pad) see padded frames differently from the true end of the signal, so padding would change the last samples.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.models.hift import HiFTConfig, HiFTGenerator, check_mel
from fmjax.models.hift_source import draw_initial_phase, draw_sine_noise
from fmjax.typing import Array, Bool, Float, Int, Key

__all__ = ["VocoderCache", "init_vocoder_cache", "vocoder_step", "vocoder_finalize", "vocode_stream", "crossfade",
           "window_update"]


class VocoderCache(NamedTuple):
    """State between chunks of ``b`` streams (``n`` cached frames, ``S = n·480`` samples); every field per row.

    Attributes:
      mel: ``[b, n, m]`` the last mel frames of the previous window.
      source: ``[b, S]`` the last source samples of the previous window.
      speech: ``[b, S]`` the withheld (not yet emitted, not yet faded) output samples.
      frames: ``[b]`` int32, mel frames consumed so far (the absolute position of the row's next chunk).
      started: ``[b]`` bool, a window has been vocoded (later windows get the prefix and the fade).
      finalized: ``[b]`` bool, :func:`vocoder_finalize` has run; the stream takes no more input.
      stream_id: ``[b]`` int32, the id that keys each stream's sine noise (with ``key``).
      key: the PRNG key of the sine noise.
    """

    mel: Float[Array, "b n m"]
    source: Float[Array, "b S"]
    speech: Float[Array, "b S"]
    frames: Int[Array, "b"]
    started: Bool[Array, "b"]
    finalized: Bool[Array, "b"]
    stream_id: Int[Array, "b"]
    key: Key


def init_vocoder_cache(config: HiFTConfig, batch: int, key: Key, *, mel_cache_len: int = 8,
                       stream_ids=None) -> VocoderCache:
    """Empty cache for ``batch`` streams. ``mel_cache_len`` is 8 in CosyVoice2 (20 in CosyVoice1); ``stream_ids``
    ``[batch]`` (default ``0 .. batch-1``) key each stream's noise."""
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
    if not (isinstance(mel_cache_len, int) and mel_cache_len >= 1):
        raise ValueError(f"mel_cache_len: expected an int >= 1, got {mel_cache_len!r}")
    ids = np.arange(batch) if stream_ids is None else np.asarray(stream_ids)
    if ids.shape != (batch,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"stream_ids: expected [{batch}] integer ids, got shape {ids.shape} dtype {ids.dtype}")
    samples = mel_cache_len * config.upsample_factor
    return VocoderCache(
        mel=jnp.zeros((batch, mel_cache_len, config.in_channels), jnp.float32),
        source=jnp.zeros((batch, samples), jnp.float32),
        speech=jnp.zeros((batch, samples), jnp.float32),
        frames=jnp.zeros((batch,), jnp.int32),
        started=jnp.zeros((batch,), bool),
        finalized=jnp.zeros((batch,), bool),
        stream_id=jnp.asarray(ids, jnp.int32),
        key=key,
    )


def crossfade(wav: Float[Array, "b L"], withheld: Float[Array, "b S"]) -> Float[Array, "b L"]:
    """CosyVoice2's window fade: the first ``S`` samples of ``wav`` become ``wav·w[:S] + withheld·w[S:]`` with the
    Hamming window ``w`` of ``2S`` samples (``np.hamming``)."""
    samples = withheld.shape[1]
    w = jnp.asarray(np.hamming(2 * samples), jnp.float32)
    return wav.at[:, :samples].set(wav[:, :samples] * w[:samples] + withheld * w[samples:])


def window_update(cache, window, wav, active, *, first: bool, final: bool, **fields):
    """The streaming-window rule shared by the vocoders: fade ``wav`` (the window's audio, ``[b, 480·t]``) into the
    withheld samples unless ``first``, emit all but the last ``S`` samples (all when ``final``), keep the window's
    last ``n`` frames and the last ``S`` samples; rows not ``active`` keep their old cache. ``fields`` are extra
    per-row cache fields (e.g. HiFT's ``source``). Returns ``(emitted [b, N], new_cache)``."""
    n, samples = cache.mel.shape[1], cache.speech.shape[1]
    c = window.shape[1] - (0 if first else n)
    if not first:
        wav = crossfade(wav, cache.speech)
    def last(a, k):  # the last k steps of a, zero-padded in front when a is shorter (a short final window)
        a = a[:, max(a.shape[1] - k, 0):]
        return jnp.pad(a, [(0, 0), (k - a.shape[1], 0)] + [(0, 0)] * (a.ndim - 2))

    for name, value in fields.items():
        fields[name] = last(value, getattr(cache, name).shape[1])
    new = cache._replace(mel=last(window, n), speech=last(wav, samples),
                         frames=cache.frames + c, started=jnp.ones_like(cache.started),
                         finalized=jnp.full_like(cache.finalized, final), **fields)
    keep = jax.tree_util.tree_map(
        lambda a, b: jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b) if a.ndim >= 1 else a, new, cache)
    keep = keep._replace(key=cache.key) if hasattr(cache, "key") else keep
    return (wav if final else wav[:, : wav.shape[1] - samples]), keep


@functools.partial(jax.jit, static_argnames=("config", "first", "final"))
def _window(config, params, cache, chunk, source_chunk, active, first, final):
    b, c, _ = chunk.shape
    window = chunk if first else jnp.concatenate([cache.mel, chunk], axis=1)  # [b, t, m]
    t = window.shape[1]
    k_noise, k_phase = jax.random.split(cache.key)  # as hift_inference splits its key
    noise = draw_sine_noise(
        k_noise, b, t, config.upsample_factor, config.harmonics, start_frame=cache.frames - (t - c),
        rows=cache.stream_id,
    )  # [b, L, h]
    phase = (draw_initial_phase(k_phase, b, config.harmonics, rows=cache.stream_id)
             if config.source == "sinegen" else None)
    prefix = None if first else cache.source
    if source_chunk is not None:
        prefix = source_chunk if first else jnp.concatenate([cache.source, source_chunk], axis=1)  # [b, L]
    wav, source, _ = HiFTGenerator(config).apply(params, window, noise, phase, source_prefix=prefix)  # [b, L]
    return window_update(cache, window, wav, active, first=first, final=final, source=source)


def _check_cache(cache, active):
    if not isinstance(cache, VocoderCache):
        raise TypeError(f"cache: expected a VocoderCache from init_vocoder_cache, got {type(cache).__name__}")
    b = cache.mel.shape[0]
    active = np.ones((b,), bool) if active is None else np.asarray(active)
    if active.dtype != bool or active.shape != (b,):
        raise ValueError(f"active: expected [{b}] bools, got {active.dtype} of shape {active.shape}")
    done = np.asarray(cache.finalized) & active
    if done.any():
        raise ValueError(f"cache: rows {np.flatnonzero(done).tolist()} were already finalized; start new streams with "
                         "init_vocoder_cache")
    started = np.asarray(cache.started)[active]
    if started.size and started.any() != started.all():
        raise ValueError("active: the active rows are at different window phases (some at their first window); "
                         "vocode them in separate calls")
    return active, bool(started.any())


def _check(config, cache, mel_chunk, source_chunk, name):
    if getattr(mel_chunk, "ndim", None) == 3 and mel_chunk.shape[1] == 0:
        raise ValueError(f"{name}: empty chunk; expected [b, c >= 1, {config.in_channels}], got {tuple(mel_chunk.shape)}")
    check_mel(mel_chunk, config, name)
    b = cache.mel.shape[0]
    if mel_chunk.shape[0] != b:
        raise ValueError(f"{name}: expected batch {b} (the cache's), got {mel_chunk.shape[0]}")
    if source_chunk is not None:
        want = (b, mel_chunk.shape[1] * config.upsample_factor)
        if tuple(source_chunk.shape) != want:
            raise ValueError(f"source_chunk: expected shape {want}, got {tuple(source_chunk.shape)}")


def vocoder_step(
    config: HiFTConfig,
    params,
    cache: VocoderCache,
    mel_chunk: Float[Array, "b c m"],
    *,
    source_chunk: Float[Array, "b C"] | None = None,
    active=None,
) -> tuple[Float[Array, "b N"], VocoderCache]:
    """Vocodes the next chunk ``[b, c, m]``; returns the ready audio ``[b, N]`` and the new cache.

    ``N = 480·c - S`` for the first chunk (which needs ``c >= n`` frames) and ``480·c`` afterwards.
    ``source_chunk [b, 480·c]`` replaces the generated source of the new frames (e.g. an offline source,
    to study the vocoder's windowing alone); by default the source is generated as in the original. ``active [b]``
    (bool, default all) selects the rows that take this chunk; the others keep their state (their output is junk).
    """
    active, started = _check_cache(cache, active)
    _check(config, cache, mel_chunk, source_chunk, "mel_chunk")
    if not started and mel_chunk.shape[1] < cache.mel.shape[1]:
        raise ValueError(
            f"mel_chunk: the first chunk of a stream needs at least {cache.mel.shape[1]} frames (the mel cache), "
            f"got {mel_chunk.shape[1]}"
        )
    return _window(config, params, cache, mel_chunk, source_chunk, jnp.asarray(active), first=not started,
                   final=False)


def vocoder_finalize(
    config: HiFTConfig,
    params,
    cache: VocoderCache,
    mel_chunk: Float[Array, "b c m"] | None = None,
    *,
    source_chunk: Float[Array, "b C"] | None = None,
    active=None,
) -> tuple[Float[Array, "b N"], VocoderCache]:
    """Vocodes the last chunk (if any) and emits everything left: ``[b, N]`` with ``N = 480·c + S``
    (``480·c`` if the stream had not started; ``S``, the withheld tail, without a last chunk)."""
    active, started = _check_cache(cache, active)
    if mel_chunk is None:
        tail = cache.speech if started else cache.speech[:, :0]
        return tail, cache._replace(finalized=cache.finalized | jnp.asarray(active))
    _check(config, cache, mel_chunk, source_chunk, "mel_chunk")
    return _window(config, params, cache, mel_chunk, source_chunk, jnp.asarray(active), first=not started,
                   final=True)


def vocode_stream(
    config: HiFTConfig,
    params,
    mel: Float[Array, "b t m"],
    chunk_frames,
    key: Key,
    *,
    source: Float[Array, "b L"] | None = None,
    mel_cache_len: int = 8,
    stream_ids=None,
) -> list[Float[Array, "b N"]]:
    """Streams ``mel`` through :func:`vocoder_step` in chunks of ``chunk_frames`` (a list of sizes summing to
    at most ``t``; the remaining frames go to :func:`vocoder_finalize`). Returns the emitted pieces. ``stream_ids``
    as :func:`init_vocoder_cache`."""
    check_mel(mel, config)
    sizes = [int(s) for s in chunk_frames]
    if any(s < 1 for s in sizes) or sum(sizes) > mel.shape[1]:
        raise ValueError(f"chunk_frames: expected sizes >= 1 summing to at most {mel.shape[1]}, got {sizes}")
    cache = init_vocoder_cache(config, mel.shape[0], key, mel_cache_len=mel_cache_len, stream_ids=stream_ids)
    up, pos, out = config.upsample_factor, 0, []
    for s in sizes:
        src = None if source is None else source[:, pos * up : (pos + s) * up]
        piece, cache = vocoder_step(config, params, cache, mel[:, pos : pos + s], source_chunk=src)
        out.append(piece)
        pos += s
    rest = mel[:, pos:] if pos < mel.shape[1] else None
    src = None if source is None or rest is None else source[:, pos * up :]
    piece, _ = vocoder_finalize(config, params, cache, rest, source_chunk=src)
    out.append(piece)
    return out
