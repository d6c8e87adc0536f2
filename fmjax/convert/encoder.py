"""CosyVoice2 ``flow.pt`` -> :class:`fmjax.models.encoder.UpsampleConformerEncoder` params (+ the token embedding).

Torch names (prefix ``encoder.``) map to Flax paths as follows; Linear weights ``(out, in)`` are transposed to
``[in, out]``, Conv1d weights ``(out, in, k)`` to ``[k, in, out]``:

==========================================  ==============================================
torch                                       Flax
==========================================  ==============================================
``embed.out.0`` / ``embed.out.1``           ``embed/linear`` / ``embed/norm``
``pre_lookahead_layer.conv{1,2}``           ``pre_lookahead_layer/conv{1,2}``
``encoders.{i}.self_attn.linear_*``         ``encoders_{i}/self_attn/linear_*``
``encoders.{i}.self_attn.pos_bias_{u,v}``   ``encoders_{i}/self_attn/pos_bias_{u,v}``
``encoders.{i}.feed_forward.w_{1,2}``       ``encoders_{i}/feed_forward/w_{1,2}``
``encoders.{i}.norm_{mha,ff}``              ``encoders_{i}/norm_{mha,ff}``
``up_layer.conv``                           ``up_layer/conv``
``up_embed.out.{0,1}``, ``up_encoders.*``   as ``embed``, ``encoders``
``after_norm``                              ``after_norm``
``input_embedding.weight`` (flow level)     :class:`TokenEmbedding` ``embedding``
==========================================  ==============================================

Sizes are inferred from shapes; ``static_chunk_size`` and ``num_left_chunks`` are not in the state dict and are
arguments (CosyVoice2: 25 and -1).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from fmjax.convert.common import StateDictError, StateDictReader, load_state_dict
from fmjax.convert.settings import resolve_settings
from fmjax.models.encoder import EncoderConfig

TOKEN_EMBEDDING_KEY = "input_embedding.weight"


class ConvertedEncoder(NamedTuple):
    """Result of :func:`convert_encoder`: apply ``UpsampleConformerEncoder(config)`` with ``params`` and
    ``TokenEmbedding(vocab_size, config.input_size)`` with ``token_params`` (None when not converted)."""

    config: EncoderConfig
    params: dict
    vocab_size: int | None
    token_params: dict | None


def _need_shape(reader: StateDictReader, name: str) -> tuple[int, ...]:
    shape = reader.shape(name)
    if shape is None:
        raise StateDictError(f"state dict does not match the encoder: missing key {name} (needed to infer sizes)")
    return shape


def _count_layers(reader: StateDictReader, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in reader.keys() if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def encoder_config_from_state_dict(
    reader: StateDictReader, prefix: str = "encoder.", *, static_chunk_size: int = 25, num_left_chunks: int = -1
) -> EncoderConfig:
    """Infers an :class:`EncoderConfig` from tensor shapes (no tensor is taken)."""
    d, e = _need_shape(reader, f"{prefix}embed.out.0.weight")
    c, _, k1 = _need_shape(reader, f"{prefix}pre_lookahead_layer.conv1.weight")
    k_up = _need_shape(reader, f"{prefix}up_layer.conv.weight")[2]
    num_blocks = _count_layers(reader, f"{prefix}encoders.")
    first = f"{prefix}encoders.0." if num_blocks else f"{prefix}up_encoders.0."
    heads = _need_shape(reader, f"{first}self_attn.pos_bias_u")[0]
    units = _need_shape(reader, f"{first}feed_forward.w_1.weight")[0]
    if k_up % 2 != 1:
        raise StateDictError(f"{prefix}up_layer.conv.weight: expected an odd kernel 2·stride+1, got {k_up}")
    return EncoderConfig(
        input_size=e, output_size=d, heads=heads, linear_units=units, num_blocks=num_blocks,
        num_up_blocks=_count_layers(reader, f"{prefix}up_encoders."), pre_lookahead_len=k1 - 1,
        lookahead_channels=c, static_chunk_size=static_chunk_size, num_left_chunks=num_left_chunks,
        upsample_stride=(k_up - 1) // 2,
    )


def _linear(r: StateDictReader, name: str, n_in: int, n_out: int, bias: bool = True) -> dict:
    out = {"kernel": r.take(f"{name}.weight", (n_out, n_in)).T}
    if bias:
        out["bias"] = r.take(f"{name}.bias", (n_out,))
    return out


def _norm(r: StateDictReader, name: str, d: int) -> dict:
    return {"scale": r.take(f"{name}.weight", (d,)), "bias": r.take(f"{name}.bias", (d,))}


def _conv(r: StateDictReader, name: str, n_in: int, n_out: int, k: int) -> dict:
    kernel = r.take(f"{name}.weight", (n_out, n_in, k)).transpose(2, 1, 0)  # [k, in, out]
    return {"kernel": kernel, "bias": r.take(f"{name}.bias", (n_out,))}


def _conformer(r: StateDictReader, name: str, cfg: EncoderConfig) -> dict:
    d, h = cfg.output_size, cfg.heads
    attn = {p: _linear(r, f"{name}.self_attn.{p}", d, d) for p in ("linear_q", "linear_k", "linear_v", "linear_out")}
    attn["linear_pos"] = _linear(r, f"{name}.self_attn.linear_pos", d, d, bias=False)
    for p in ("pos_bias_u", "pos_bias_v"):
        attn[p] = r.take(f"{name}.self_attn.{p}", (h, d // h))
    return {
        "norm_mha": _norm(r, f"{name}.norm_mha", d),
        "self_attn": attn,
        "norm_ff": _norm(r, f"{name}.norm_ff", d),
        "feed_forward": {
            "w_1": _linear(r, f"{name}.feed_forward.w_1", d, cfg.linear_units),
            "w_2": _linear(r, f"{name}.feed_forward.w_2", cfg.linear_units, d),
        },
    }


def read_encoder_params(reader: StateDictReader, config: EncoderConfig, prefix: str = "encoder.") -> dict:
    """Takes every ``{prefix}*`` tensor from ``reader`` (shape-checked) and returns ``{"params": ...}`` for
    :class:`UpsampleConformerEncoder`. Call ``reader.finish()`` afterwards to report mismatches."""
    cfg, p = config, prefix
    d, e, c = cfg.output_size, cfg.input_size, cfg.lookahead_channels

    def embed(name):
        return {"linear": _linear(reader, f"{p}{name}.out.0", e, d), "norm": _norm(reader, f"{p}{name}.out.1", d)}

    params = {
        "embed": embed("embed"),
        "pre_lookahead_layer": {
            "conv1": _conv(reader, f"{p}pre_lookahead_layer.conv1", d, c, cfg.pre_lookahead_len + 1),
            "conv2": _conv(reader, f"{p}pre_lookahead_layer.conv2", c, d, 3),
        },
        "up_layer": {"conv": _conv(reader, f"{p}up_layer.conv", d, d, 2 * cfg.upsample_stride + 1)},
        "up_embed": embed("up_embed"),
        "after_norm": _norm(reader, f"{p}after_norm", d),
    }
    for i in range(cfg.num_blocks):
        params[f"encoders_{i}"] = _conformer(reader, f"{p}encoders.{i}", cfg)
    for i in range(cfg.num_up_blocks):
        params[f"up_encoders_{i}"] = _conformer(reader, f"{p}up_encoders.{i}", cfg)
    return {"params": params}


def read_token_embedding(reader: StateDictReader, dim: int, name: str = TOKEN_EMBEDDING_KEY) -> tuple[int, dict]:
    """Takes the token table ``(vocab, dim)``; returns ``(vocab_size, {"params": {"embedding": ...}})``."""
    shape = reader.shape(name)
    vocab = shape[0] if shape is not None and len(shape) == 2 else 1
    table = reader.take(name, (vocab, dim) if shape is not None else None)
    return vocab, {"params": {"embedding": table}}


def convert_encoder(
    source,
    *,
    prefix: str = "encoder.",
    token_embedding: str | None = TOKEN_EMBEDDING_KEY,
    static_chunk_size: int | None = None,
    num_left_chunks: int | None = None,
    preset: str | None = None, cosyvoice_yaml=None,
) -> ConvertedEncoder:
    """Converts the encoder (and the token embedding) of a CosyVoice2 flow state dict.

    Args:
      source: a ``flow.pt``/``.npz``/``.safetensors`` path or a mapping of torch names to arrays. Keys outside
        ``prefix`` (and other than ``token_embedding``) are ignored, so a whole flow checkpoint works.
      prefix: where the encoder's tensors live.
      token_embedding: key of the token table, or None to skip it.
      static_chunk_size, num_left_chunks: streaming chunk settings (not stored in checkpoints).
      preset, cosyvoice_yaml: where the settings the tensors cannot tell come from when not given: the released
        model's values (``"cosyvoice2"``, ``"cosyvoice3"``) or the model directory's CosyVoice YAML; a setting found
        nowhere raises ``ValueError`` naming it (see :mod:`fmjax.convert.settings`).

    Raises:
      StateDictError: listing every missing, unexpected (under ``prefix``) and mis-shaped key.
    """
    chosen = resolve_settings("convert_encoder", dict(static_chunk_size=static_chunk_size,
                                                      num_left_chunks=num_left_chunks),
                              preset=preset, cosyvoice_yaml=cosyvoice_yaml)
    static_chunk_size, num_left_chunks = chosen["static_chunk_size"], chosen["num_left_chunks"]
    state = load_state_dict(source)
    keep = {k: v for k, v in state.items() if k.startswith(prefix) or k == token_embedding}
    reader = StateDictReader(keep, what="CosyVoice2 UpsampleConformerEncoder")
    config = encoder_config_from_state_dict(
        reader, prefix, static_chunk_size=static_chunk_size, num_left_chunks=num_left_chunks
    )
    params = read_encoder_params(reader, config, prefix)
    vocab, token_params = (None, None)
    if token_embedding is not None:
        vocab, token_params = read_token_embedding(reader, config.input_size, token_embedding)
    reader.finish()
    params = _to_float32(params)
    return ConvertedEncoder(config, params, vocab, None if token_params is None else _to_float32(token_params))


def _to_float32(tree):
    if isinstance(tree, dict):
        return {k: _to_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)
