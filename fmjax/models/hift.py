"""HiFT vocoder (CosyVoice 1/2 ``HiFTGenerator``: neural source-filter + iSTFTNet), channels last.

mel ``[b, t, 80]`` -> waveform ``[b, 480·t]`` at 24 kHz (full size: 20.8 M parameters):

1. f0 predictor: 5 × (conv k=3 + ELU), a linear layer and ``abs`` -> f0 ``[b, t]`` in Hz.
2. Source: f0 repeated to samples drives :func:`~fmjax.models.hift_source.sinegen2` (or ``sinegen``), merged
   by ``tanh(l_linear(·))`` -> source ``[b, L]``; its STFT (n_fft 16, hop 4) is fused into every up stage.
3. Filter: ``conv_pre``; per stage ``leaky_relu(0.1)``, a transposed conv (×8, ×5, ×3), a reflection pad
   of one frame at the last stage, ``+ source_resblocks(source_downs(stft))``, the mean of 3 Snake
   resblocks; ``leaky_relu(0.01)``, ``conv_post`` -> log-magnitude and phase logits of 9 bins;
   ``istft(min(exp(·), 100) · e^{i·sin(·)})``; clamp ±0.99.

The randomness is explicit: :func:`hift_inference` takes a key (noise fixed by frame position, see
:func:`~fmjax.models.hift_source.draw_sine_noise`) or the noise draws themselves, and :func:`hift_decode`
maps (mel, source) to the waveform deterministically. Params mirror the torch module tree
(``f0_predictor``, ``m_source``, ``conv_pre``, ``ups_i``, ``source_downs_i``, ``source_resblocks_i``,
``resblocks_i``, ``conv_post``); :mod:`fmjax.convert.hift` fills them from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fmjax import signal
from fmjax.models.hift_source import SourceModule, draw_initial_phase, draw_sine_noise, sinegen, sinegen2
from fmjax.nn.conv import Conv1d
from fmjax.nn.hift_blocks import ResBlock, UpsampleConvTranspose1d, cos_small, sin, sin_small
from fmjax.typing import Array, Float, Key

__all__ = ["HiFTConfig", "F0Predictor", "HiFTGenerator", "param_shapes", "init_hift", "hift_inference", "hift_decode", "check_mel"]

_SOURCES = ("sinegen2", "sinegen")


@dataclasses.dataclass(frozen=True)
class HiFTConfig:
    """HiFT hyper-parameters; the defaults are CosyVoice2's (``cosyvoice2.yaml``, 24 kHz, SineGen2).

    ``source`` picks the sine generator: ``"sinegen2"`` (CosyVoice2 at HEAD) or ``"sinegen"`` (CosyVoice1, and
    CosyVoice2 before 2025-05; the original picks SineGen iff ``sampling_rate == 22050``).
    """

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop_length: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_channels: int = 512
    f0_num_convs: int = 5
    source: str = "sinegen2"

    def __post_init__(self):
        if self.source not in _SOURCES:
            raise ValueError(f"source: expected one of {_SOURCES}, got {self.source!r}")
        n = len(self.upsample_rates)
        for name in ("upsample_kernel_sizes", "source_resblock_kernel_sizes", "source_resblock_dilations"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected {n} entries (one per upsample rate), got {getattr(self, name)}")
        if len(self.resblock_dilations) != len(self.resblock_kernel_sizes):
            raise ValueError("resblock_dilations: expected one tuple per resblock kernel size")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if (k - u) % 2 or k < u:
                raise ValueError(f"upsample_kernel_sizes: kernel {k} with rate {u} must have k - u even and >= 0")
        if self.base_channels % 2**n:
            raise ValueError(f"base_channels: expected a multiple of {2**n}, got {self.base_channels}")

    @property
    def upsample_factor(self) -> int:
        """Waveform samples per mel frame (480 for CosyVoice2)."""
        return math.prod(self.upsample_rates) * self.hop_length

    @property
    def harmonics(self) -> int:
        """Sinusoids in the source: the fundamental plus ``nb_harmonics`` overtones."""
        return self.nb_harmonics + 1

    @classmethod
    def small(cls) -> "HiFTConfig":
        """The small configuration of the reference fixtures (base 32 channels, f0 predictor width 32)."""
        return cls(base_channels=32, f0_channels=32)


class F0Predictor(nn.Module):
    """CosyVoice ``ConvRNNF0Predictor``: ``num_convs`` × (conv k=3 pad 1 + ELU), Dense(1), ``abs``.

    Submodules ``condnet_0, condnet_2, ...`` (the torch Sequential indices) and ``classifier``.
    """

    channels: int = 512
    num_convs: int = 5

    @nn.compact
    def __call__(self, mel: Float[Array, "b t m"]) -> Float[Array, "b t"]:
        x = mel
        for i in range(self.num_convs):
            x = nn.elu(Conv1d(self.channels, 3, padding=1, name=f"condnet_{2 * i}")(x))  # [b, t, d]
        return jnp.abs(nn.Dense(1, name="classifier")(x)[..., 0])  # [b, t]


class HiFTGenerator(nn.Module):
    """The HiFT generator. ``__call__`` returns ``(wav [b, L], source [b, L], aux)`` with ``L = 480·t``.

    Either ``source`` is given (the deterministic ``decode`` path: f0 predictor and sine generator are skipped)
    or it is generated from the predicted f0 and ``sine_noise [b, L, harmonics]`` (standard normal draws;
    SineGen also needs ``initial_phase [b, harmonics]``). ``source_prefix [b, S]`` overwrites the first ``S``
    source samples (CosyVoice2's ``cache_source``, used when streaming). ``aux`` holds the stages the torch
    fixture records, channels last: ``f0``, ``s_stft``, ``conv_pre``, ``ups{i}`` (before the reflection pad),
    ``source_downs{i}``, ``source_resblocks{i}``, ``conv_post``.
    """

    config: HiFTConfig

    @nn.compact
    def __call__(
        self,
        mel: Float[Array, "b t m"],
        sine_noise: Float[Array, "b L h"] | None = None,
        initial_phase: Float[Array, "b h"] | None = None,
        *,
        source: Float[Array, "b L"] | None = None,
        source_prefix: Float[Array, "b S"] | None = None,
    ):
        cfg = self.config
        aux = {}
        if source is None:
            source, aux["f0"] = self._source(mel, sine_noise, initial_phase)
        if source_prefix is not None:
            source = source.at[:, : source_prefix.shape[1]].set(source_prefix)
        spec = signal.stft(source, cfg.n_fft, cfg.hop_length, signal.hann_window(cfg.n_fft))  # [b, f, n/2+1]
        s_stft = jnp.concatenate([spec.real, spec.imag], axis=-1)  # [b, f, n+2]
        aux["s_stft"] = s_stft

        x = Conv1d(cfg.base_channels, 7, padding=3, name="conv_pre")(mel)  # [b, t, d]
        aux["conv_pre"] = x
        n_up, n_k = len(cfg.upsample_rates), len(cfg.resblock_kernel_sizes)
        down_rates = np.cumprod([1, *cfg.upsample_rates[::-1][:-1]])[::-1]  # source frames per stage step
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            ch = cfg.base_channels // 2 ** (i + 1)
            x = jax.nn.leaky_relu(x, cfg.lrelu_slope)
            x = UpsampleConvTranspose1d(ch, k, u, (k - u) // 2, name=f"ups_{i}")(x)  # [b, u·t_i, ch]
            aux[f"ups{i}"] = x
            if i == n_up - 1:
                x = jnp.concatenate([x[:, 1:2], x], axis=1)  # reflection pad (1, 0): [b, t_i + 1, ch]
            r = int(down_rates[i])
            down = (
                Conv1d(ch, 1, name=f"source_downs_{i}")
                if r == 1
                else Conv1d(ch, 2 * r, stride=r, padding=r // 2, name=f"source_downs_{i}")
            )
            si = down(s_stft)  # [b, t_i, ch]
            aux[f"source_downs{i}"] = si
            si = ResBlock(
                cfg.source_resblock_kernel_sizes[i], cfg.source_resblock_dilations[i], name=f"source_resblocks_{i}"
            )(si)
            aux[f"source_resblocks{i}"] = si
            x = x + si
            xs = None
            for j, (kj, dj) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)):
                y = ResBlock(kj, dj, name=f"resblocks_{i * n_k + j}")(x)
                xs = y if xs is None else xs + y
            x = xs / n_k
        x = jax.nn.leaky_relu(x, 0.01)  # the default slope of F.leaky_relu, not lrelu_slope
        x = Conv1d(cfg.n_fft + 2, 7, padding=3, name="conv_post")(x)  # [b, f, n+2]
        aux["conv_post"] = x
        bins = cfg.n_fft // 2 + 1
        magnitude = jnp.minimum(jnp.exp(x[..., :bins]), 1e2)
        phase = sin(x[..., bins:])  # a bounded phase in [-1, 1], as in the original
        spec = jax.lax.complex(magnitude * cos_small(phase), magnitude * sin_small(phase))
        # signal.istft builds its window envelope with jnp ops on constants and reads it back with np.asarray,
        # which fails under jit unless those constant ops are evaluated eagerly at trace time.
        with jax.ensure_compile_time_eval():
            wav = signal.istft(spec, cfg.n_fft, cfg.hop_length, signal.hann_window(cfg.n_fft))  # [b, L]
        wav = jnp.clip(wav, -cfg.audio_limit, cfg.audio_limit)
        return wav, source, aux

    def _source(self, mel, sine_noise, initial_phase):
        cfg = self.config
        f0 = F0Predictor(cfg.f0_channels, cfg.f0_num_convs, name="f0_predictor")(mel)  # [b, t]
        if sine_noise is None:
            raise ValueError("sine_noise: required when no source is given")
        kw = dict(
            sampling_rate=cfg.sampling_rate,
            upsample=cfg.upsample_factor,
            sine_amp=cfg.nsf_alpha,
            noise_std=cfg.nsf_sigma,
            voiced_threshold=cfg.nsf_voiced_threshold,
        )
        if cfg.source == "sinegen2":
            waves = sinegen2(f0, sine_noise, **kw)  # [b, L, h]
        else:
            if initial_phase is None:
                raise ValueError("initial_phase: required by the 'sinegen' source")
            waves = sinegen(f0, sine_noise, initial_phase, **kw)  # [b, L, h]
        return SourceModule(name="m_source")(waves), f0  # [b, L], [b, t]


def check_mel(mel, config: HiFTConfig, name: str = "mel") -> None:
    """Raises a ValueError/TypeError naming ``name`` unless it is a float ``[b, t >= 1, in_channels]`` array
    without NaN or inf (the finiteness check runs on concrete arrays, never on tracers)."""
    if not hasattr(mel, "shape") or not hasattr(mel, "dtype"):
        raise TypeError(f"{name}: expected an array [b, t, {config.in_channels}], got {type(mel).__name__}")
    if not jnp.issubdtype(mel.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {mel.dtype}")
    if mel.ndim != 3 or mel.shape[-1] != config.in_channels:
        raise ValueError(f"{name}: expected shape [b, t, {config.in_channels}] (channels last), got {tuple(mel.shape)}")
    if mel.shape[0] < 1 or mel.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one example and one frame, got shape {tuple(mel.shape)}")
    if not isinstance(mel, jax.core.Tracer) and not np.isfinite(np.asarray(mel)).all():
        raise ValueError(f"{name}: contains NaN or inf values")


def param_shapes(config: HiFTConfig):
    """The params pytree of ``config`` as ``jax.ShapeDtypeStruct`` leaves (traced only, nothing computed)."""
    mel = jax.ShapeDtypeStruct((1, 2, config.in_channels), jnp.float32)
    noise = jax.ShapeDtypeStruct((1, 2 * config.upsample_factor, config.harmonics), jnp.float32)
    phase = jax.ShapeDtypeStruct((1, config.harmonics), jnp.float32)
    return jax.eval_shape(HiFTGenerator(config).init, jax.random.key(0), mel, noise, phase)


def init_hift(config: HiFTConfig, seed: int = 0):
    """Random params for tests and benchmarks: kernels ``N(0, 1/fan_in)``, zero biases, Snake ``α = 1``.

    Drawn with numpy from ``seed``: compiling Flax's per-parameter initialisers for ~300 tensors takes XLA
    tens of seconds on a CPU, for weights that are only placeholders (HiFT training is not in scope).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        return (np.ones if name == "alpha" else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


@functools.partial(jax.jit, static_argnames=("config",))
def _inference(config, params, mel, key, sine_noise, initial_phase, start_frame, source_prefix, stream_ids):
    b, t, _ = mel.shape
    if sine_noise is None:
        k_noise, k_phase = jax.random.split(key)
        sine_noise = draw_sine_noise(
            k_noise, b, t, config.upsample_factor, config.harmonics, start_frame=start_frame, rows=stream_ids
        )  # [b, L, h]
        if initial_phase is None and config.source == "sinegen":
            initial_phase = draw_initial_phase(k_phase, b, config.harmonics, rows=stream_ids)  # [b, h]
    wav, source, _ = HiFTGenerator(config).apply(
        params, mel, sine_noise, initial_phase, source_prefix=source_prefix
    )
    return wav, source


def hift_inference(
    config: HiFTConfig,
    params,
    mel: Float[Array, "b t m"],
    *,
    key: Key | None = None,
    sine_noise: Float[Array, "b L h"] | None = None,
    initial_phase: Float[Array, "b h"] | None = None,
    start_frame=0,
    cache_source: Float[Array, "b S"] | None = None,
    stream_ids=None,
) -> tuple[Float[Array, "b L"], Float[Array, "b L"]]:
    """Vocodes ``mel [b, t, m]`` -> ``(wav [b, L], source [b, L])``, ``L = upsample_factor·t``; jitted per shape.

    Give either ``key`` (noise drawn by absolute frame position ``start_frame + j``; SineGen's initial phases
    from a split of it unless given) or ``sine_noise [b, L, harmonics]`` (e.g. recorded torch draws).
    ``cache_source [b, S]`` (``S <= L``) overwrites the first ``S`` source samples, as CosyVoice2 does when
    streaming. ``stream_ids [b]`` (default ``0 .. b-1``) key each row's noise by its stream's id, so a row's audio
    does not depend on its place in the batch.
    """
    check_mel(mel, config)
    b, t, _ = mel.shape
    length = t * config.upsample_factor
    if (key is None) == (sine_noise is None):
        raise ValueError("key / sine_noise: give exactly one of them")
    if sine_noise is not None and tuple(sine_noise.shape) != (b, length, config.harmonics):
        raise ValueError(
            f"sine_noise: expected shape {(b, length, config.harmonics)} for mel {tuple(mel.shape)}, "
            f"got {tuple(sine_noise.shape)}"
        )
    if config.source == "sinegen" and sine_noise is not None and initial_phase is None:
        raise ValueError("initial_phase: required with sine_noise by the 'sinegen' source")
    if initial_phase is not None and tuple(initial_phase.shape) != (b, config.harmonics):
        raise ValueError(f"initial_phase: expected shape {(b, config.harmonics)}, got {tuple(initial_phase.shape)}")
    if cache_source is not None and (cache_source.ndim != 2 or cache_source.shape[0] != b or cache_source.shape[1] > length):
        raise ValueError(f"cache_source: expected shape [{b}, S <= {length}], got {tuple(cache_source.shape)}")
    if cache_source is not None and cache_source.shape[1] == 0:
        cache_source = None
    if stream_ids is not None and tuple(np.shape(stream_ids)) != (b,):
        raise ValueError(f"stream_ids: expected [{b}] integer ids, got shape {np.shape(stream_ids)}")
    return _inference(config, params, mel, key, sine_noise, initial_phase, start_frame, cache_source,
                      None if stream_ids is None else jnp.asarray(stream_ids, jnp.int32))


@functools.partial(jax.jit, static_argnames=("config",))
def _decode(config, params, mel, source):
    return HiFTGenerator(config).apply(params, mel, source=source)[0]


def hift_decode(config: HiFTConfig, params, mel: Float[Array, "b t m"], source: Float[Array, "b L"]) -> Float[Array, "b L"]:
    """Deterministic filter: ``(mel [b, t, m], source [b, L = upsample_factor·t]) -> wav [b, L]``; jitted."""
    check_mel(mel, config)
    length = mel.shape[1] * config.upsample_factor
    if source.ndim != 2 or tuple(source.shape) != (mel.shape[0], length):
        raise ValueError(f"source: expected shape {(mel.shape[0], length)} for mel {tuple(mel.shape)}, got {tuple(source.shape)}")
    return _decode(config, params, mel, source)
