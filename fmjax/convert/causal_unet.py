"""CosyVoice2 ``CausalConditionalDecoder`` state dict -> (:class:`CausalUNetConfig`, Flax params).

Torch names (``decoder.estimator.`` in ``flow.pt``, or none) map as follows (``<S>`` = ``down_blocks.0``,
``mid_blocks.<i>``, ``up_blocks.0``; ``<stage>`` = ``down``, ``mid_<i>``, ``up``):

===========================================  ==============================================
torch                                        Flax
===========================================  ==============================================
``time_mlp.linear_{1,2}``                    ``time_mlp/linear_{1,2}``
``<S>.0.block{1,2}.block.0`` / ``.block.2``  ``<stage>/resnet/block{1,2}/conv`` / ``/norm``
``<S>.0.mlp.1``, ``<S>.0.res_conv``          ``<stage>/resnet/time_proj``, ``/res_conv``
``<S>.1.<j>.norm1``, ``.norm3``              ``<stage>/tf_<j>/norm1``, ``/norm3``
``<S>.1.<j>.attn1.to_{q,k,v}``, ``to_out.0``  ``<stage>/tf_<j>/attn1/to_{q,k,v}``, ``/to_out``
``<S>.1.<j>.ff.net.0.proj``, ``ff.net.2``    ``<stage>/tf_<j>/ff/proj_in``, ``/proj_out``
``down_blocks.0.2``, ``up_blocks.0.2``       ``down_conv``, ``up_conv``
``final_block.block.{0,2}``, ``final_proj``  ``final_block/{conv,norm}``, ``final_proj``
===========================================  ==============================================

Linear weights ``(out, in)`` become kernels ``[in, out]``; Conv1d ``(out, in, k)`` becomes ``[k, in, out]``;
LayerNorm ``weight`` becomes ``scale``. Sizes are inferred from the shapes; the attention head count, the
chunk size and the left-chunk count are not in the weights and are arguments.
"""

from __future__ import annotations

import re

from fmjax.convert.common import StateDictReader, float32_params, load_state_dict
from fmjax.convert.settings import resolve_settings
from fmjax.models.causal_unet import CausalUNetConfig

FLOW_PREFIX = "decoder.estimator."


def convert_causal_unet(
    source,
    *,
    num_heads: int | None = None,
    chunk_size: int | None = None,
    num_left_chunks: int | None = None,
    activation: str | None = None,
    preset: str | None = None, cosyvoice_yaml=None,
) -> tuple[CausalUNetConfig, dict]:
    """Converts a CosyVoice2 estimator state dict.

    Args:
      source: a path (``.pt``/``.npz``/``.safetensors``) or a mapping of names to arrays; names may carry the
        ``decoder.estimator.`` prefix of a whole ``flow.pt`` (other keys are then ignored) or none.
      num_heads: attention heads (8 in CosyVoice2, 4 in the small fixtures); the head width is inferred.
      chunk_size, num_left_chunks: streaming chunk mask (50 frames and -1 in CosyVoice2).
      activation: feed-forward activation; default ``"snakebeta"`` when ``ff.net.0.alpha`` exists, else ``"gelu"``.
      preset, cosyvoice_yaml: where the settings the tensors cannot tell come from when not given: the released
        model's values (``"cosyvoice2"``, ``"cosyvoice3"``) or the model directory's CosyVoice YAML; a setting found
        nowhere raises ``ValueError`` naming it (see :mod:`fmjax.convert.settings`).

    Returns:
      ``(config, {"params": ...})`` ready for ``CausalConditionalDecoder(config).apply``.

    Raises:
      StateDictError: listing every missing, unexpected and mis-shaped key.
      ValueError: sizes that do not form a valid config.
    """
    chosen = resolve_settings("convert_causal_unet", dict(num_heads=num_heads, chunk_size=chunk_size,
                                                          num_left_chunks=num_left_chunks),
                              preset=preset, cosyvoice_yaml=cosyvoice_yaml)
    num_heads, chunk_size, num_left_chunks = chosen["num_heads"], chosen["chunk_size"], chosen["num_left_chunks"]
    sd = load_state_dict(source)
    if any(k.startswith(FLOW_PREFIX) for k in sd):
        sd = {k[len(FLOW_PREFIX):]: v for k, v in sd.items() if k.startswith(FLOW_PREFIX)}
    r = StateDictReader(sd, what="CosyVoice2 CausalConditionalDecoder")
    cfg = _infer_config(r, num_heads, chunk_size, num_left_chunks, activation)
    d, inner, te = cfg.channels, cfg.num_heads * cfg.head_dim, cfg.time_embed_dim

    def linear(name, n_in, n_out, bias=True):
        out = {"kernel": r.take(f"{name}.weight", (n_out, n_in)).T}
        if bias:
            out["bias"] = r.take(f"{name}.bias", (n_out,))
        return out

    def conv(name, n_in, n_out, k):
        return {"kernel": r.take(f"{name}.weight", (n_out, n_in, k)).transpose(2, 1, 0),
                "bias": r.take(f"{name}.bias", (n_out,))}

    def norm(name, n):
        return {"scale": r.take(f"{name}.weight", (n,)), "bias": r.take(f"{name}.bias", (n,))}

    def block(name, n_in):
        return {"conv": conv(f"{name}.block.0", n_in, d, 3), "norm": norm(f"{name}.block.2", d)}

    def transformer(name):
        ff = {"proj_in": linear(f"{name}.ff.net.0.proj", d, cfg.ff_mult * d),
              "proj_out": linear(f"{name}.ff.net.2", cfg.ff_mult * d, d)}
        if cfg.activation == "snakebeta":
            ff["alpha"] = r.take(f"{name}.ff.net.0.alpha", (cfg.ff_mult * d,))
            ff["beta"] = r.take(f"{name}.ff.net.0.beta", (cfg.ff_mult * d,))
        attn = {k: linear(f"{name}.attn1.{k}", d, inner, bias=False) for k in ("to_q", "to_k", "to_v")}
        attn["to_out"] = linear(f"{name}.attn1.to_out.0", inner, d)
        return {"norm1": norm(f"{name}.norm1", d), "attn1": attn, "norm3": norm(f"{name}.norm3", d), "ff": ff}

    def stage(name, n_in):
        resnet = {"block1": block(f"{name}.0.block1", n_in), "block2": block(f"{name}.0.block2", d),
                  "time_proj": linear(f"{name}.0.mlp.1", te, d), "res_conv": conv(f"{name}.0.res_conv", n_in, d, 1)}
        out = {"resnet": resnet}
        out.update({f"tf_{j}": transformer(f"{name}.1.{j}") for j in range(cfg.n_blocks)})
        return out

    mids = [stage(f"mid_blocks.{i}", d) for i in range(cfg.num_mid_blocks)]
    params = {
        "time_mlp": {"linear_1": linear("time_mlp.linear_1", cfg.in_channels, te),
                     "linear_2": linear("time_mlp.linear_2", te, te)},
        "down": stage("down_blocks.0", cfg.in_channels),
        "down_conv": conv("down_blocks.0.2", d, d, 3),
        "up": stage("up_blocks.0", 2 * d),
        "up_conv": conv("up_blocks.0.2", d, d, 3),
        "final_block": block("final_block", d),
        "final_proj": conv("final_proj", d, cfg.mel_dim, 1),
    }
    params.update({f"mid_{i}": stage_params for i, stage_params in enumerate(mids)})
    r.finish()
    return cfg, float32_params(params)


def _infer_config(r: StateDictReader, num_heads, chunk_size, num_left_chunks, activation) -> CausalUNetConfig:
    needed = {
        "conv_in": "down_blocks.0.0.block1.block.0.weight",
        "proj": "final_proj.weight",
        "q": "down_blocks.0.1.0.attn1.to_q.weight",
        "ff": "down_blocks.0.1.0.ff.net.0.proj.weight",
    }
    shapes = r.require_shapes(needed)
    if any(k.startswith("down_blocks.1.") for k in r.keys()):
        raise ValueError("state dict: found down_blocks.1.*, but the causal U-Net has a single level (channels=[c])")
    d, in_channels, _ = shapes["conv_in"]
    mel = shapes["proj"][0]
    inner = shapes["q"][0]
    if inner % num_heads:
        raise ValueError(f"num_heads: attention width {inner} is not divisible by num_heads={num_heads}")
    spk = in_channels - 3 * mel
    if spk < 1:
        raise ValueError(f"state dict: input width {in_channels} cannot hold x, mu and cond of {mel} mel bins + spks")
    n_blocks = _count(r, r"down_blocks\.0\.1\.(\d+)\.norm1\.weight")
    n_mid = _count(r, r"mid_blocks\.(\d+)\.0\.mlp\.1\.weight")
    if activation is None:
        activation = "snakebeta" if "down_blocks.0.1.0.ff.net.0.alpha" in r else "gelu"
    return CausalUNetConfig(
        mel_dim=mel, mu_dim=mel, spk_dim=spk, cond_dim=mel, channels=d, n_blocks=n_blocks, num_mid_blocks=n_mid,
        num_heads=num_heads, head_dim=inner // num_heads, ff_mult=shapes["ff"][0] // d, activation=activation,
        chunk_size=chunk_size, num_left_chunks=num_left_chunks,
    )


def _count(r: StateDictReader, pattern: str) -> int:
    found = {int(m.group(1)) for k in r.keys() if (m := re.fullmatch(pattern, k))}
    return max(found) + 1 if found else 1
