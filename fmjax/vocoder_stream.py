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
noise is drawn by absolute frame position from the key in the cache, so every frame sees the noise an
offline :func:`~fmjax.models.hift.hift_inference` with the same key would. The SineGen2 phase, however,
restarts at every window, as in the original, so voiced parts are not sample-identical to an offline call.

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

__all__ = ["VocoderCache", "init_vocoder_cache", "vocoder_step", "vocoder_finalize", "vocode_stream"]


class VocoderCache(NamedTuple):
    """State between chunks of a batch of lock-step streams (``n`` cached frames, ``S = n·480`` samples).

    Attributes:
      mel: ``[b, n, m]`` the last mel frames of the previous window.
      source: ``[b, S]`` the last source samples of the previous window.
      speech: ``[b, S]`` the withheld (not yet emitted, not yet faded) output samples.
      frames: ``[]`` int32, mel frames consumed so far (the absolute position of the next chunk).
      started: ``[]`` bool, a window has been vocoded (later windows get the prefix and the fade).
      finalized: ``[]`` bool, :func:`vocoder_finalize` has run; the stream takes no more input.
      key: the PRNG key of the sine noise (fixed per stream; rows fold in their index).
    """

    mel: Float[Array, "b n m"]
    source: Float[Array, "b S"]
    speech: Float[Array, "b S"]
    frames: Int[Array, ""]
    started: Bool[Array, ""]
    finalized: Bool[Array, ""]
    key: Key


def init_vocoder_cache(config: HiFTConfig, batch: int, key: Key, *, mel_cache_len: int = 8) -> VocoderCache:
    """Empty cache for ``batch`` streams. ``mel_cache_len`` is 8 in CosyVoice2 (20 in CosyVoice1)."""
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
    if not (isinstance(mel_cache_len, int) and mel_cache_len >= 1):
        raise ValueError(f"mel_cache_len: expected an int >= 1, got {mel_cache_len!r}")
    samples = mel_cache_len * config.upsample_factor
    return VocoderCache(
        mel=jnp.zeros((batch, mel_cache_len, config.in_channels), jnp.float32),
        source=jnp.zeros((batch, samples), jnp.float32),
        speech=jnp.zeros((batch, samples), jnp.float32),
        frames=jnp.zeros((), jnp.int32),
        started=jnp.zeros((), bool),
        finalized=jnp.zeros((), bool),
        key=key,
    )


@functools.partial(jax.jit, static_argnames=("config", "first", "final"))
def _window(config, params, cache, chunk, source_chunk, first, final):
    n, samples = cache.mel.shape[1], cache.source.shape[1]
    b, c, _ = chunk.shape
    window = chunk if first else jnp.concatenate([cache.mel, chunk], axis=1)  # [b, t, m]
    t = window.shape[1]
    k_noise, k_phase = jax.random.split(cache.key)  # as hift_inference splits its key
    noise = draw_sine_noise(
        k_noise, b, t, config.upsample_factor, config.harmonics, start_frame=cache.frames - (t - c)
    )  # [b, L, h]
    phase = draw_initial_phase(k_phase, b, config.harmonics) if config.source == "sinegen" else None
    prefix = None if first else cache.source
    if source_chunk is not None:
        prefix = source_chunk if first else jnp.concatenate([cache.source, source_chunk], axis=1)  # [b, L]
    wav, source, _ = HiFTGenerator(config).apply(params, window, noise, phase, source_prefix=prefix)  # [b, L]
    if not first:
        w = jnp.asarray(np.hamming(2 * samples), jnp.float32)
        wav = wav.at[:, :samples].set(wav[:, :samples] * w[:samples] + cache.speech * w[samples:])
    new = VocoderCache(
        mel=window[:, t - n :],
        source=source[:, source.shape[1] - samples :],
        speech=wav[:, wav.shape[1] - samples :],
        frames=cache.frames + c,
        started=jnp.ones((), bool),
        finalized=jnp.asarray(final),
        key=cache.key,
    )
    return (wav if final else wav[:, : wav.shape[1] - samples]), new


def _check_cache(cache):
    if not isinstance(cache, VocoderCache):
        raise TypeError(f"cache: expected a VocoderCache from init_vocoder_cache, got {type(cache).__name__}")
    if bool(cache.finalized):
        raise ValueError("cache: this stream was already finalized; start a new one with init_vocoder_cache")


def _check(config, cache, mel_chunk, source_chunk, name):
    _check_cache(cache)
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
) -> tuple[Float[Array, "b N"], VocoderCache]:
    """Vocodes the next chunk ``[b, c, m]``; returns the ready audio ``[b, N]`` and the new cache.

    ``N = 480·c - S`` for the first chunk (which needs ``c >= n`` frames) and ``480·c`` afterwards.
    ``source_chunk [b, 480·c]`` replaces the generated source of the new frames (e.g. an offline source,
    to study the vocoder's windowing alone); by default the source is generated as in the original.
    """
    _check(config, cache, mel_chunk, source_chunk, "mel_chunk")
    first = not bool(cache.started)
    if first and mel_chunk.shape[1] < cache.mel.shape[1]:
        raise ValueError(
            f"mel_chunk: the first chunk of a stream needs at least {cache.mel.shape[1]} frames (the mel cache), "
            f"got {mel_chunk.shape[1]}"
        )
    return _window(config, params, cache, mel_chunk, source_chunk, first=first, final=False)


def vocoder_finalize(
    config: HiFTConfig,
    params,
    cache: VocoderCache,
    mel_chunk: Float[Array, "b c m"] | None = None,
    *,
    source_chunk: Float[Array, "b C"] | None = None,
) -> tuple[Float[Array, "b N"], VocoderCache]:
    """Vocodes the last chunk (if any) and emits everything left: ``[b, N]`` with ``N = 480·c + S``
    (``480·c`` if the stream had not started; ``S``, the withheld tail, without a last chunk)."""
    if mel_chunk is None:
        _check_cache(cache)
        tail = cache.speech if bool(cache.started) else cache.speech[:, :0]
        return tail, cache._replace(finalized=jnp.ones((), bool))
    _check(config, cache, mel_chunk, source_chunk, "mel_chunk")
    return _window(config, params, cache, mel_chunk, source_chunk, first=not bool(cache.started), final=True)


def vocode_stream(
    config: HiFTConfig,
    params,
    mel: Float[Array, "b t m"],
    chunk_frames,
    key: Key,
    *,
    source: Float[Array, "b L"] | None = None,
    mel_cache_len: int = 8,
) -> list[Float[Array, "b N"]]:
    """Streams ``mel`` through :func:`vocoder_step` in chunks of ``chunk_frames`` (a list of sizes summing to
    at most ``t``; the remaining frames go to :func:`vocoder_finalize`). Returns the emitted pieces."""
    check_mel(mel, config)
    sizes = [int(s) for s in chunk_frames]
    if any(s < 1 for s in sizes) or sum(sizes) > mel.shape[1]:
        raise ValueError(f"chunk_frames: expected sizes >= 1 summing to at most {mel.shape[1]}, got {sizes}")
    cache = init_vocoder_cache(config, mel.shape[0], key, mel_cache_len=mel_cache_len)
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
