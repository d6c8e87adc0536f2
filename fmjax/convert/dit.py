"""CosyVoice3 / F5-TTS ``DiT`` state dict -> (:class:`DiTConfig`, Flax params).

Torch names (``decoder.estimator.`` in a CosyVoice3 ``flow.pt``, or none) map as follows (one param tree per
block, ``blocks_<i>``):

=====================================================  ==================================================
torch                                                  Flax
=====================================================  ==================================================
``time_embed.time_mlp.0`` / ``.2``                     ``time_embed/linear_1`` / ``linear_2``
``input_embed.proj``                                   ``input_proj``
``input_embed.conv_pos_embed.conv{1,2}.0``             ``conv_pos/conv{1,2}``
``transformer_blocks.<i>.attn_norm.linear``            ``blocks_<i>/mod``
``transformer_blocks.<i>.attn.to_{q,k,v}``, ``to_out.0``  ``blocks_<i>/attn/to_{q,k,v}``, ``/to_out``
``transformer_blocks.<i>.ff.ff.0.0`` / ``ff.ff.2``     ``blocks_<i>/ff/proj_in`` / ``proj_out``
``norm_out.linear``, ``proj_out``                      ``norm_out``, ``proj_out``
``rotary_embed.inv_freq``                              checked against ``10000^(-2k/dim_head)``, not stored
=====================================================  ==================================================

Linear weights ``(out, in)`` become kernels ``[in, out]``; Conv1d ``(out, in/groups, k)`` becomes
``[k, in/groups, out]``. Sizes are inferred from the shapes (``dim_head`` = 2·len(``inv_freq``), ``heads`` =
``to_q`` width / ``dim_head``, conv groups = ``dim`` / conv input width). The split of the packed input width
between ``mu`` and ``spks``, the chunk size and the left-chunk count are not in the weights and are arguments.
"""

from __future__ import annotations

import re

import numpy as np

from fmjax.convert.common import StateDictError, StateDictReader, float32_params, load_state_dict
from fmjax.convert.settings import resolve_settings
from fmjax.models.dit import TIME_FREQ_DIM, DiTConfig
from fmjax.nn.rotary import rotary_inv_freq

FLOW_PREFIX = "decoder.estimator."
_WHAT = "CosyVoice3 DiT"


def convert_dit(
    source, *, mu_dim: int | None = None, chunk_size: int | None = None, num_left_chunks: int | None = None,
    preset: str | None = None, cosyvoice_yaml=None,
) -> tuple[DiTConfig, dict]:
    """Converts a CosyVoice3 DiT estimator state dict.

    Args:
      source: a path (``.pt``/``.npz``/``.safetensors``) or a mapping of names to arrays; names may carry the
        ``decoder.estimator.`` prefix of a whole flow (other keys are then ignored) or none.
      mu_dim: width of ``mu`` in the packed input (default: ``mel_dim``, as CosyVoice3); ``spk_dim`` is the rest.
      chunk_size, num_left_chunks: streaming chunk mask (50 frames and -1 in CosyVoice3).
      preset, cosyvoice_yaml: where the settings the tensors cannot tell come from when not given: the released
        model's values (``"cosyvoice2"``, ``"cosyvoice3"``) or the model directory's CosyVoice YAML; a setting found
        nowhere raises ``ValueError`` naming it (see :mod:`fmjax.convert.settings`).

    Returns:
      ``(config, {"params": ...})`` ready for ``DiT(config).apply``.

    Raises:
      StateDictError: listing every missing, unexpected and mis-shaped key, or a wrong ``inv_freq``.
      ValueError: sizes that do not form a valid config.
    """
    chosen = resolve_settings("convert_dit", dict(chunk_size=chunk_size, num_left_chunks=num_left_chunks),
                              preset=preset, cosyvoice_yaml=cosyvoice_yaml)
    chunk_size, num_left_chunks = chosen["chunk_size"], chosen["num_left_chunks"]
    sd = load_state_dict(source)
    if any(k.startswith(FLOW_PREFIX) for k in sd):
        sd = {k[len(FLOW_PREFIX):]: v for k, v in sd.items() if k.startswith(FLOW_PREFIX)}
    r = StateDictReader(sd, what=_WHAT)
    cfg = _infer_config(r, mu_dim, chunk_size, num_left_chunks)
    d, inner, ff = cfg.dim, cfg.heads * cfg.dim_head, cfg.ff_mult * cfg.dim

    def linear(name, n_in, n_out):
        return {"kernel": r.take(f"{name}.weight", (n_out, n_in)).T, "bias": r.take(f"{name}.bias", (n_out,))}

    def conv(name):
        w = r.take(f"{name}.weight", (d, d // cfg.conv_pos_groups, cfg.conv_pos_kernel))
        return {"kernel": w.transpose(2, 1, 0), "bias": r.take(f"{name}.bias", (d,))}

    def block(i):
        p = f"transformer_blocks.{i}"
        attn = {k: linear(f"{p}.attn.{k}", d, inner) for k in ("to_q", "to_k", "to_v")}
        attn["to_out"] = linear(f"{p}.attn.to_out.0", inner, d)
        return {
            "mod": linear(f"{p}.attn_norm.linear", d, 6 * d),
            "attn": attn,
            "ff": {"proj_in": linear(f"{p}.ff.ff.0.0", d, ff), "proj_out": linear(f"{p}.ff.ff.2", ff, d)},
        }

    inv_freq = r.take("rotary_embed.inv_freq", (cfg.dim_head // 2,))
    params = {
        "time_embed": {"linear_1": linear("time_embed.time_mlp.0", TIME_FREQ_DIM, d),
                       "linear_2": linear("time_embed.time_mlp.2", d, d)},
        "input_proj": linear("input_embed.proj", cfg.in_channels, d),
        "conv_pos": {"conv1": conv("input_embed.conv_pos_embed.conv1.0"),
                     "conv2": conv("input_embed.conv_pos_embed.conv2.0")},
        "norm_out": linear("norm_out.linear", d, 2 * d),
        "proj_out": linear("proj_out", d, cfg.mel_dim),
    }
    params.update({f"blocks_{i}": block(i) for i in range(cfg.depth)})
    r.finish()
    expected = rotary_inv_freq(cfg.dim_head)
    if not np.allclose(inv_freq, expected, rtol=1e-6, atol=0):
        raise StateDictError(
            f"state dict does not match the {_WHAT}: rotary_embed.inv_freq is not 10000^(-2k/{cfg.dim_head}) "
            f"(max relative deviation {np.max(np.abs(inv_freq / expected - 1)):.3g}); fmjax supports only base 10000"
        )
    return cfg, float32_params(params)


def _infer_config(r: StateDictReader, mu_dim, chunk_size, num_left_chunks) -> DiTConfig:
    needed = {
        "proj": "input_embed.proj.weight",
        "out": "proj_out.weight",
        "rope": "rotary_embed.inv_freq",
        "q": "transformer_blocks.0.attn.to_q.weight",
        "ff": "transformer_blocks.0.ff.ff.0.0.weight",
        "conv": "input_embed.conv_pos_embed.conv1.0.weight",
    }
    shapes = r.require_shapes(needed)
    dim, in_channels = shapes["proj"]
    mel = shapes["out"][0]
    dim_head = 2 * shapes["rope"][0]
    inner = shapes["q"][0]
    if inner % dim_head:
        raise ValueError(f"state dict: to_q width {inner} is not a multiple of dim_head={dim_head} (from inv_freq)")
    conv_in, kernel = shapes["conv"][1:]
    if dim % conv_in:
        raise ValueError(f"state dict: conv_pos input width {conv_in} does not divide dim={dim}")
    mu = mel if mu_dim is None else mu_dim
    spk = in_channels - 2 * mel - mu
    if spk < 1:
        raise ValueError(
            f"state dict: input width {in_channels} cannot hold x and prompt of {mel} mel bins, mu of {mu} and spks"
        )
    return DiTConfig(
        dim=dim, depth=_count(r, r"transformer_blocks\.(\d+)\.attn_norm\.linear\.weight"), heads=inner // dim_head,
        dim_head=dim_head, ff_mult=shapes["ff"][0] // dim, mel_dim=mel, mu_dim=mu, spk_dim=spk,
        chunk_size=chunk_size, num_left_chunks=num_left_chunks, conv_pos_kernel=kernel, conv_pos_groups=dim // conv_in,
    )


def _count(r: StateDictReader, pattern: str) -> int:
    found = {int(m.group(1)) for k in r.keys() if (m := re.fullmatch(pattern, k))}
    return max(found) + 1 if found else 1
