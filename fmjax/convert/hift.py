"""CosyVoice ``hift.pt`` (``HiFTGenerator`` state dict) -> ``(HiFTConfig, params)``.

Weight norm is folded: ``w = g · v / ‖v‖`` with the norm over every dim but 0, read from
``<m>.parametrizations.weight.original0/1`` (g, v) or the older ``<m>.weight_g / weight_v``; a plain
``<m>.weight`` (weight norm already removed) is taken as is. For ConvTranspose1d (torch weight
``(in, out, k)``) dim 0 is the *input* channel. Layouts: Conv1d ``(out, in, k)`` -> ``[k, in, out]``,
ConvTranspose1d ``(in, out, k)`` -> ``[k, in, out]``, Linear ``(out, in)`` -> ``[in, out]``.

The config is inferred from the tensor shapes, except what no shape records: the sampling rate, the STFT
hop, the NSF constants and the dilations (CosyVoice's values by default; pass ``config=`` to override).
"""

from __future__ import annotations

import re

import jax
import numpy as np

from fmjax.convert.settings import resolve_settings
from fmjax.convert.common import StateDictError, StateDictReader, load_state_dict
from fmjax.models.hift import HiFTConfig, param_shapes

__all__ = ["convert_hift", "infer_hift_config", "fold_weight_norm"]


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``g · v / ‖v‖`` with the L2 norm over all dims except 0 (torch ``weight_norm(dim=0)``); float32."""
    v64 = v.astype(np.float64)
    norm = np.sqrt(np.sum(v64 * v64, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (v64 * (g.astype(np.float64).reshape(norm.shape) / norm)).astype(np.float32)


def _weight_shape(sd: StateDictReader, base: str) -> tuple[int, ...] | None:
    for suffix in (".parametrizations.weight.original1", ".weight_v", ".weight"):
        if sd.shape(base + suffix) is not None:
            return sd.shape(base + suffix)
    return None


def _count(sd: StateDictReader, pattern: str) -> int:
    """Number of distinct indices (the first group) in keys matching ``pattern`` at their start."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd.keys() if (m := rx.match(k))})


def infer_hift_config(
    state_dict, *, sampling_rate: int = 24000, samples_per_frame: int = 480, hop_length: int = 4, source: str | None = None
) -> HiFTConfig:
    """Reads a :class:`HiFTConfig` off the tensor shapes of a HiFT state dict (a mapping or a reader).

    ``samples_per_frame`` (480 at 24 kHz, 256 for CosyVoice1 at 22.05 kHz) and ``hop_length`` fix the first
    upsample rate, the only rate no shape records. ``source`` defaults to the original's rule: ``"sinegen"``
    iff ``sampling_rate == 22050``.
    """
    sd = state_dict if isinstance(state_dict, StateDictReader) else StateDictReader(state_dict)
    pre = _weight_shape(sd, "conv_pre")
    post = _weight_shape(sd, "conv_post")
    f0 = _weight_shape(sd, "f0_predictor.condnet.0")
    lin = sd.shape("m_source.l_linear.weight")
    n_up = _count(sd, r"ups\.(\d+)\.")
    if None in (pre, post, f0, lin) or n_up == 0:
        raise StateDictError(
            "state dict does not look like a HiFTGenerator: needs conv_pre, conv_post, ups.*, "
            "f0_predictor.condnet.0 and m_source.l_linear weights"
        )
    ups_k = tuple(_weight_shape(sd, f"ups.{i}")[2] for i in range(n_up))
    downs_k = [sd.shape(f"source_downs.{i}.weight")[2] for i in range(n_up)]
    cum = [k // 2 if k > 1 else 1 for k in downs_k]  # source_downs kernel = 2·(cumulative rate), or 1
    rates = [cum[i - 1] // cum[i] for i in range(1, n_up)]
    first, rem = divmod(samples_per_frame, hop_length * int(np.prod(rates)))
    if rem or first < 1:
        raise ValueError(
            f"samples_per_frame: {samples_per_frame} is not hop_length={hop_length} times a multiple of the "
            f"later upsample rates {rates}"
        )
    n_k = _count(sd, r"resblocks\.(\d+)\.") // n_up  # resblocks per stage
    n_dil = _count(sd, r"resblocks\.0\.convs1\.(\d+)\.")
    n_sdil = _count(sd, r"source_resblocks\.0\.convs1\.(\d+)\.")
    default = HiFTConfig()
    if n_dil != len(default.resblock_dilations[0]) or n_sdil != len(default.source_resblock_dilations[0]):
        raise ValueError(
            f"resblocks have {n_dil} / source resblocks {n_sdil} dilations (not 3): pass config= explicitly"
        )
    return HiFTConfig(
        in_channels=pre[1],
        base_channels=pre[0],
        nb_harmonics=lin[1] - 1,
        sampling_rate=sampling_rate,
        upsample_rates=(first, *rates),
        upsample_kernel_sizes=ups_k,
        n_fft=post[0] - 2,
        hop_length=hop_length,
        resblock_kernel_sizes=tuple(_weight_shape(sd, f"resblocks.{j}.convs1.0")[2] for j in range(n_k)),
        resblock_dilations=(default.resblock_dilations[0],) * n_k,
        source_resblock_kernel_sizes=tuple(_weight_shape(sd, f"source_resblocks.{i}.convs1.0")[2] for i in range(n_up)),
        source_resblock_dilations=(default.source_resblock_dilations[0],) * n_up,
        f0_channels=f0[0],
        f0_num_convs=_count(sd, r"f0_predictor\.condnet\.(\d+)\."),
        source=source if source is not None else ("sinegen" if sampling_rate == 22050 else "sinegen2"),
    )


def _torch_name(path: tuple[str, ...]) -> str:
    """Flax module path (``resblocks_4``, ``convs1_0``) -> torch module name (``resblocks.4.convs1.0``)."""
    return ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)


def _take_weight(sd: StateDictReader, base: str, shape: tuple[int, ...]) -> np.ndarray:
    for g_name, v_name in (
        (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
        (".weight_g", ".weight_v"),
    ):
        if base + v_name in sd or base + g_name in sd:
            g = sd.take(base + g_name, (shape[0],) + (1,) * (len(shape) - 1))
            v = sd.take(base + v_name, shape)
            return fold_weight_norm(g, v)
    return sd.take(base + ".weight", shape)


def _convert_leaf(sd: StateDictReader, path: tuple[str, ...], leaf) -> np.ndarray:
    *mod, kind = path
    base = _torch_name(tuple(mod))
    shape = tuple(leaf.shape)
    if kind == "kernel" and len(shape) == 2:  # Dense [in, out] <- Linear (out, in)
        return sd.take(base + ".weight", shape[::-1]).T
    if kind == "kernel" and base.startswith("ups."):  # ConvTranspose1d (in, out, k) -> [k, in, out]
        return _take_weight(sd, base, (shape[1], shape[2], shape[0])).transpose(2, 0, 1)
    if kind == "kernel":  # Conv1d (out, in, k) -> [k, in, out]
        return _take_weight(sd, base, shape[::-1]).transpose(2, 1, 0)
    return sd.take(f"{base}.{kind}", shape)  # bias, alpha


def convert_hift(
    source,
    *,
    config: HiFTConfig | None = None,
    prefix: str = "",
    sampling_rate: int | None = None,
    samples_per_frame: int | None = None,
    hop_length: int | None = None,
    preset: str | None = None, cosyvoice_yaml=None,
):
    """Loads a HiFT checkpoint (``hift.pt`` path, ``.npz``, ``.safetensors`` or a mapping) -> ``(config, params)``.

    Args:
      source: anything :func:`fmjax.convert.common.load_state_dict` reads.
      config: use this config instead of inferring one (its shapes are still checked against the tensors).
      prefix: keep only keys under this prefix (e.g. ``"generator."``), with the prefix removed.
      sampling_rate, samples_per_frame, hop_length: see :func:`infer_hift_config` (not needed with ``config``).
      preset, cosyvoice_yaml: where the settings the tensors cannot tell come from when not given: the released
        model's values (``"cosyvoice2"``, ``"cosyvoice3"``) or the model directory's CosyVoice YAML; a setting found
        nowhere raises ``ValueError`` naming it (see :mod:`fmjax.convert.settings`).

    Raises:
      StateDictError: listing every missing, unexpected and mis-shaped tensor.
    """
    sd = StateDictReader(load_state_dict(source, prefix=prefix), what="HiFTGenerator")
    if config is None:
        chosen = resolve_settings("convert_hift", dict(sampling_rate=sampling_rate, samples_per_frame=samples_per_frame,
                                                       hop_length=hop_length),
                                  preset=preset, cosyvoice_yaml=cosyvoice_yaml)
        sampling_rate, samples_per_frame, hop_length = (chosen[k] for k in ("sampling_rate", "samples_per_frame",
                                                                             "hop_length"))
        config = infer_hift_config(
            sd, sampling_rate=sampling_rate, samples_per_frame=samples_per_frame, hop_length=hop_length
        )
    params = jax.tree_util.tree_map_with_path(
        lambda p, leaf: _convert_leaf(sd, tuple(k.key for k in p[1:]), leaf), param_shapes(config)
    )  # p[0] is the "params" collection
    sd.finish()
    return config, jax.tree_util.tree_map(np.asarray, params)
