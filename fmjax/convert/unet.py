"""Matcha-TTS ``Decoder`` / CosyVoice1 ``ConditionalDecoder`` state dict -> (:class:`UNetConfig`, Flax params).

Both originals share one module tree. Torch names (``decoder.estimator.`` in a Matcha checkpoint or in
CosyVoice's ``flow.pt``, or none) map as follows (``<S>`` = ``down_blocks.<i>``, ``mid_blocks.<k>``,
``up_blocks.<i>``; mid stages are stacked on a leading axis under ``mid``):

=============================================  ===================================================
torch                                          Flax
=============================================  ===================================================
``time_mlp.linear_{1,2}``                      ``time_mlp/linear_{1,2}``
``<S>.0.block{1,2}.block.0`` / ``.block.1``    ``<stage>/resnet/block{1,2}/conv`` / ``/norm`` (GroupNorm)
``<S>.0.mlp.1``, ``<S>.0.res_conv``            ``<stage>/resnet/time_proj``, ``/res_conv``
``<S>.1.<j>.norm1`` / ``.norm3``               ``<stage>/tf_<j>/norm1`` / ``/norm3``
``<S>.1.<j>.attn1.to_{q,k,v}``, ``.to_out.0``  ``<stage>/tf_<j>/attn1/to_{q,k,v}``, ``/to_out``
``<S>.1.<j>.ff.net.0.proj``, ``.ff.net.2``     ``<stage>/tf_<j>/ff/proj_in``, ``/proj_out``
``<S>.1.<j>.ff.net.0.{alpha,beta}``            ``<stage>/tf_<j>/ff/{alpha,beta}`` (snake-beta only)
``down_blocks.<i>.2.conv`` / ``.2`` (last)     ``downsample_<i>/conv`` / ``downsample_<i>``
``up_blocks.<i>.2.conv`` / ``.2`` (last)       ``upsample_<i>/conv`` (ConvTranspose) / ``upsample_<i>``
``final_block.block.{0,1}``, ``final_proj``    ``final_block/{conv,norm}``, ``final_proj``
=============================================  ===================================================

Linear weights ``(out, in)`` become ``kernel [in, out]``; Conv1d ``(out, in, k)`` become ``[k, in, out]``;
ConvTranspose1d ``(in, out, k)`` become ``[k, in, out]``.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from fmjax.convert.common import StateDictError, StateDictReader, float32_params, load_state_dict
from fmjax.models.unet import UNetConfig

PREFIX = "decoder.estimator."


def convert_unet(
    source,
    *,
    num_heads: int,
    cond_dim: int = 0,
    activation: str | None = None,
    attention_mask: str = "additive_keys",
    crop_upsampled: bool = False,
) -> tuple[UNetConfig, dict]:
    """Reads a Matcha-TTS / CosyVoice1 estimator state dict and returns ``(config, variables)``.

    Sizes come from the shapes: levels and ``channels``, ``in_channels``, ``mel_dim`` (``mu_dim`` is taken
    equal to it), ``n_blocks``, ``num_mid_blocks``, the attention width, ``ff_mult``.

    Args:
      source: path (``.pt``/``.ckpt``/``.npz``/``.safetensors``) or mapping; keys with the ``decoder.estimator.``
        prefix are used when present (a whole Matcha or CosyVoice checkpoint), else all keys.
      num_heads: attention heads (not visible in the shapes): Matcha's configs use 2, CosyVoice-300M 8.
      cond_dim: width of the prompt condition packed last (CosyVoice1: 80; Matcha: 0). The speaker width is
        what remains: ``spk_dim = in_channels - 2·mel_dim - cond_dim``.
      activation: feed-forward activation; default ``"snakebeta"`` when ``ff.net.0.alpha`` exists, else
        ``"gelu"`` (pass ``"gelu_tanh"`` for diffusers' ``gelu-approximate``, which has the same weights).
      attention_mask, crop_upsampled: the variant (see :mod:`fmjax.models.unet`); Matcha's by default,
        ``"key_padding"`` and ``True`` for CosyVoice at HEAD.

    Returns:
      ``(config, {"params": ...})`` ready for ``ConditionalDecoder(config).apply``.

    Raises:
      StateDictError: listing every missing, unexpected and mis-shaped key.
      ValueError: sizes that do not form a valid config.
    """
    sd = load_state_dict(source)
    if any(k.startswith(PREFIX) for k in sd):
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    r = StateDictReader(sd, what="Matcha/CosyVoice1 ConditionalDecoder")
    cfg = _infer_config(r, num_heads, cond_dim, activation, attention_mask, crop_upsampled)
    inner, te, levels = cfg.num_heads * cfg.head_dim, cfg.time_embed_dim, len(cfg.channels)

    def linear(name, n_in, n_out, bias=True):
        out = {"kernel": r.take(f"{name}.weight", (n_out, n_in)).T}
        if bias:
            out["bias"] = r.take(f"{name}.bias", (n_out,))
        return out

    def conv(name, n_in, n_out, k):
        return {"kernel": r.take(f"{name}.weight", (n_out, n_in, k)).transpose(2, 1, 0),
                "bias": r.take(f"{name}.bias", (n_out,))}

    def conv_transpose(name, n_in, n_out, k):
        return {"kernel": r.take(f"{name}.weight", (n_in, n_out, k)).transpose(2, 0, 1),
                "bias": r.take(f"{name}.bias", (n_out,))}

    def norm(name, n):
        return {"scale": r.take(f"{name}.weight", (n,)), "bias": r.take(f"{name}.bias", (n,))}

    def block(name, n_in, d):
        return {"conv": conv(f"{name}.block.0", n_in, d, 3), "norm": norm(f"{name}.block.1", d)}

    def transformer(name, d):
        ff = {"proj_in": linear(f"{name}.ff.net.0.proj", d, cfg.ff_mult * d),
              "proj_out": linear(f"{name}.ff.net.2", cfg.ff_mult * d, d)}
        if cfg.activation == "snakebeta":
            ff["alpha"] = r.take(f"{name}.ff.net.0.alpha", (cfg.ff_mult * d,))
            ff["beta"] = r.take(f"{name}.ff.net.0.beta", (cfg.ff_mult * d,))
        attn = {k: linear(f"{name}.attn1.{k}", d, inner, bias=False) for k in ("to_q", "to_k", "to_v")}
        attn["to_out"] = linear(f"{name}.attn1.to_out.0", inner, d)
        return {"norm1": norm(f"{name}.norm1", d), "attn1": attn, "norm3": norm(f"{name}.norm3", d), "ff": ff}

    def stage(name, n_in, d):
        resnet = {"block1": block(f"{name}.0.block1", n_in, d), "block2": block(f"{name}.0.block2", d, d),
                  "time_proj": linear(f"{name}.0.mlp.1", te, d), "res_conv": conv(f"{name}.0.res_conv", n_in, d, 1)}
        out = {"resnet": resnet}
        out.update({f"tf_{j}": transformer(f"{name}.1.{j}", d) for j in range(cfg.n_blocks)})
        return out

    params = {"time_mlp": {"linear_1": linear("time_mlp.linear_1", cfg.in_channels, te),
                           "linear_2": linear("time_mlp.linear_2", te, te)}}
    width_in = cfg.in_channels
    for i, d in enumerate(cfg.channels):
        params[f"down_{i}"] = stage(f"down_blocks.{i}", width_in, d)
        if i < levels - 1:
            params[f"downsample_{i}"] = {"conv": conv(f"down_blocks.{i}.2.conv", d, d, 3)}
        else:
            params[f"downsample_{i}"] = conv(f"down_blocks.{i}.2", d, d, 3)
        width_in = d
    if cfg.num_mid_blocks:
        mids = [stage(f"mid_blocks.{k}", cfg.channels[-1], cfg.channels[-1]) for k in range(cfg.num_mid_blocks)]
        params["mid"] = jax.tree_util.tree_map(lambda *a: np.stack(a), *mids)
    widths = cfg.channels[::-1] + cfg.channels[:1]
    for i in range(levels):
        d = widths[i + 1]
        params[f"up_{i}"] = stage(f"up_blocks.{i}", 2 * widths[i], d)
        if i < levels - 1:
            params[f"upsample_{i}"] = {"conv": conv_transpose(f"up_blocks.{i}.2.conv", d, d, 4)}
        else:
            params[f"upsample_{i}"] = conv(f"up_blocks.{i}.2", d, d, 3)
    params["final_block"] = block("final_block", cfg.channels[0], cfg.channels[0])
    params["final_proj"] = conv("final_proj", cfg.channels[0], cfg.mel_dim, 1)
    r.finish()
    return cfg, float32_params(params)


def _infer_config(r: StateDictReader, num_heads, cond_dim, activation, attention_mask, crop_upsampled) -> UNetConfig:
    needed = {
        "conv_in": "down_blocks.0.0.block1.block.0.weight",
        "proj": "final_proj.weight",
        "q": "down_blocks.0.1.0.attn1.to_q.weight",
        "ff": "down_blocks.0.1.0.ff.net.0.proj.weight",
    }
    shapes = r.require_shapes(needed)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads!r}")
    levels = _count(r, r"down_blocks\.(\d+)\.0\.block1\.block\.0\.weight")
    channels = []
    for i in range(levels):
        shape = r.shape(f"down_blocks.{i}.0.block1.block.0.weight")
        if shape is None:
            raise StateDictError(
                f"state dict: down_blocks.{i}.0.block1.block.0.weight is missing (found {levels} levels)"
            )
        channels.append(shape[0])
    in_channels = shapes["conv_in"][1]
    mel = shapes["proj"][0]
    inner = shapes["q"][0]
    if inner % num_heads:
        raise ValueError(f"num_heads: attention width {inner} is not divisible by num_heads={num_heads}")
    spk = in_channels - 2 * mel - cond_dim
    if spk < 0:
        raise ValueError(
            f"cond_dim: input width {in_channels} cannot hold x and mu of {mel} mel bins plus cond_dim={cond_dim}"
        )
    if activation is None:
        activation = "snakebeta" if "down_blocks.0.1.0.ff.net.0.alpha" in r else "gelu"
    return UNetConfig(
        mel_dim=mel, mu_dim=mel, spk_dim=spk, cond_dim=cond_dim, channels=tuple(channels),
        n_blocks=_count(r, r"down_blocks\.0\.1\.(\d+)\.norm1\.weight"),
        num_mid_blocks=_count(r, r"mid_blocks\.(\d+)\.0\.mlp\.1\.weight"),
        num_heads=num_heads, head_dim=inner // num_heads, ff_mult=shapes["ff"][0] // channels[0],
        activation=activation, attention_mask=attention_mask, crop_upsampled=crop_upsampled,
    )


def _count(r: StateDictReader, pattern: str) -> int:
    found = {int(m.group(1)) for k in r.keys() if (m := re.fullmatch(pattern, k))}
    return max(found) + 1 if found else 0
