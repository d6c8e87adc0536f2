"""CosyVoice2 ``flow.pt`` -> (:class:`~fmjax.models.flow.Token2MelConfig`, Flax params), and fmjax flow checkpoints.

The torch state dict maps onto :class:`~fmjax.models.flow.CosyVoice2Flow` as:

===================================  ===============================================================
torch                                Flax (``params/...``)
===================================  ===============================================================
``input_embedding.weight``           ``input_embedding/embedding``
``spk_embed_affine_layer.*``         ``spk_embed_affine_layer/{kernel,bias}`` (Linear: transposed)
``encoder.*``                        ``encoder/...`` (see :mod:`fmjax.convert.encoder`)
``encoder_proj.*``                   ``encoder_proj/{kernel,bias}``
``decoder.estimator.*``              ``decoder/...`` (see :mod:`fmjax.convert.causal_unet`)
===================================  ===============================================================

Sizes are inferred from the shapes. Three settings are not stored in a checkpoint: the streaming chunk
(``static_chunk_size`` tokens; the estimator's chunk is ``token_mel_ratio`` times that), the left-chunk count, and the
estimator's attention head count. They are arguments, or read from the model directory's ``cosyvoice2.yaml``
(``cosyvoice_yaml=``), or the released model's (``preset="cosyvoice2"``): never a silent default
(:mod:`fmjax.convert.settings`). Every key is validated; one
:class:`~fmjax.convert.common.StateDictError` names all missing, unexpected and mis-shaped keys of the flow and
its estimator.

An fmjax checkpoint (CosyVoice2's or CosyVoice3's flow) is a directory: ``config.json`` (the config, with its class
name) and ``params/`` (an orbax ``StandardCheckpointer`` tree); :mod:`fmjax.checkpoint` writes and reads it
(``save_flow_checkpoint``, ``load_flow_checkpoint``, ``config_to_dict`` and ``config_from_dict`` stay importable from
here). Loading it needs neither torch nor the original files.
"""

from __future__ import annotations

import jax
import numpy as np

from fmjax import checkpoint as _ckpt
from fmjax.convert.causal_unet import FLOW_PREFIX, convert_causal_unet
from fmjax.convert.common import StateDictError, StateDictReader, load_state_dict
from fmjax.convert.settings import resolve_settings
from fmjax.convert.encoder import encoder_config_from_state_dict, read_encoder_params, read_token_embedding
from fmjax.models.flow import Token2MelConfig

__all__ = ["convert_flow", "save_flow_checkpoint", "load_flow_checkpoint", "config_to_dict", "config_from_dict"]

def convert_flow(
    source, *, static_chunk_size: int | None = None, num_left_chunks: int | None = None,
    decoder_heads: int | None = None, preset: str | None = None, cosyvoice_yaml=None,
) -> tuple[Token2MelConfig, dict]:
    """Converts a CosyVoice2 flow state dict.

    Args:
      source: ``flow.pt`` (needs the ``torch`` extra), ``.npz`` / ``.safetensors``, or a mapping of torch names
        to arrays.
      static_chunk_size: streaming chunk ``C`` in tokens (CosyVoice2: 25; the small fixtures: 5).
      num_left_chunks: left chunks a chunk sees, ``-1`` = all (CosyVoice2 HEAD).
      decoder_heads: attention heads of the estimator (CosyVoice2: 8; the small fixtures: 4).
      preset, cosyvoice_yaml: where the settings the tensors cannot tell come from when not given: the released
        model's values (``"cosyvoice2"``, ``"cosyvoice3"``) or the model directory's CosyVoice YAML; a setting found
        nowhere raises ``ValueError`` naming it (see :mod:`fmjax.convert.settings`).

    Returns:
      ``(config, {"params": ...})`` for ``CosyVoice2Flow(config).apply``.

    Raises:
      StateDictError: naming every missing, unexpected and mis-shaped key.
    """
    chosen = resolve_settings("convert_flow", dict(static_chunk_size=static_chunk_size, num_left_chunks=num_left_chunks,
                                                   decoder_heads=decoder_heads),
                              preset=preset, cosyvoice_yaml=cosyvoice_yaml)
    static_chunk_size, num_left_chunks = chosen["static_chunk_size"], chosen["num_left_chunks"]
    decoder_heads = chosen["decoder_heads"]
    state = load_state_dict(source)
    estimator_sd = {k: v for k, v in state.items() if k.startswith(FLOW_PREFIX)}
    reader = StateDictReader(
        {k: v for k, v in state.items() if not k.startswith(FLOW_PREFIX)}, what="CosyVoice2 flow"
    )
    problems = []
    try:
        encoder = encoder_config_from_state_dict(
            reader, static_chunk_size=static_chunk_size, num_left_chunks=num_left_chunks
        )
    except StateDictError as e:
        problems.append(str(e))
        encoder = None
    est_cfg, est_params = None, None
    if not estimator_sd:
        problems.append(f"state dict does not match the CosyVoice2 flow: missing keys {FLOW_PREFIX}* (no estimator)")
    else:
        chunk = static_chunk_size * (encoder.upsample_stride if encoder is not None else 2)
        try:
            est_cfg, est_params = convert_causal_unet(
                estimator_sd, num_heads=decoder_heads, chunk_size=chunk, num_left_chunks=num_left_chunks
            )
        except StateDictError as e:
            problems.append(str(e).replace(":\n", f" (keys under {FLOW_PREFIX}):\n", 1))
    params = {}
    if encoder is not None:
        d = encoder.output_size
        mel = est_cfg.mu_dim if est_cfg is not None else _rows(reader, "encoder_proj.weight", 80)
        spk = est_cfg.spk_dim if est_cfg is not None else _rows(reader, "spk_embed_affine_layer.weight", 80)
        spk_in = (reader.shape("spk_embed_affine_layer.weight") or (spk, 192))[-1]
        params["encoder"] = read_encoder_params(reader, encoder)["params"]
        vocab, table = read_token_embedding(reader, encoder.input_size)
        params["input_embedding"] = table["params"]
        params["spk_embed_affine_layer"] = _linear(reader, "spk_embed_affine_layer", spk_in, spk)
        params["encoder_proj"] = _linear(reader, "encoder_proj", d, mel)
    try:
        reader.finish()
    except StateDictError as e:
        problems.insert(0, str(e))
    if problems:
        raise StateDictError("\n".join(problems))
    params["decoder"] = est_params["params"]
    config = Token2MelConfig(vocab_size=vocab, spk_embed_dim=spk_in, encoder=encoder, estimator=est_cfg)
    return config, {"params": jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)}


def _rows(reader: StateDictReader, name: str, default: int) -> int:
    shape = reader.shape(name)
    return shape[0] if shape else default


def _linear(reader: StateDictReader, name: str, n_in: int, n_out: int) -> dict:
    return {"kernel": reader.take(f"{name}.weight", (n_out, n_in)).T, "bias": reader.take(f"{name}.bias", (n_out,))}


# ------------------------------------------------------------------------------------------------ checkpoints
# Flow checkpoints live in fmjax.checkpoint; the names stay importable from here.
save_flow_checkpoint = _ckpt.save_flow_checkpoint
load_flow_checkpoint = _ckpt.load_flow_checkpoint
config_to_dict = _ckpt.flow_config_to_dict
config_from_dict = _ckpt.flow_config_from_dict
CONFIG_FILE, PARAMS_DIR = _ckpt.CONFIG_FILE, _ckpt.PARAMS_DIR
