"""CosyVoice3 ``flow.pt`` -> (:class:`~fmjax.models.flow_cv3.CosyVoice3FlowConfig`, Flax params).

===================================  ===============================================================
torch                                Flax (``params/...``)
===================================  ===============================================================
``input_embedding.weight``           ``input_embedding/embedding``
``pre_lookahead_layer.conv{1,2}``    ``pre_lookahead_layer/conv{1,2}`` (Conv1d ``(out, in, k)`` -> ``[k, in, out]``)
``spk_embed_affine_layer.*``         ``spk_embed_affine_layer/{kernel,bias}``
``decoder.estimator.*``              ``decoder/...`` (see :mod:`fmjax.convert.dit`)
===================================  ===============================================================

Sizes are inferred from the shapes; the token-to-mel ratio, the streaming chunk (tokens) and the left-chunk count
are not stored and are arguments. Every key is validated, and one
:class:`~fmjax.convert.common.StateDictError` names all bad keys of the flow and its DiT. Checkpoints:
:func:`fmjax.convert.flow.save_flow_checkpoint` / :func:`~fmjax.convert.flow.load_flow_checkpoint`.
"""

from __future__ import annotations

import jax
import numpy as np

from fmjax.convert.settings import resolve_settings
from fmjax.convert.common import StateDictError, StateDictReader, load_state_dict
from fmjax.convert.dit import FLOW_PREFIX, convert_dit
from fmjax.models.encoder import LOOKAHEAD_CONV2_KERNEL
from fmjax.models.flow_cv3 import CosyVoice3FlowConfig

__all__ = ["convert_flow_cv3"]

_WHAT = "CosyVoice3 flow"


def convert_flow_cv3(
    source, *, chunk_size: int | None = None, num_left_chunks: int | None = None, token_mel_ratio: int | None = None,
    preset: str | None = None, cosyvoice_yaml=None,
) -> tuple[CosyVoice3FlowConfig, dict]:
    """Converts a CosyVoice3 flow state dict (``CausalMaskedDiffWithDiT``).

    Args:
      source: ``flow.pt`` (torch extra), ``.npz`` / ``.safetensors``, or a mapping of torch names to arrays.
      chunk_size: streaming chunk ``C`` in tokens (CosyVoice3: 25; the small fixture: 5).
      num_left_chunks: left chunks a chunk sees, ``-1`` = all.
      token_mel_ratio: mel frames per token (2).
      preset, cosyvoice_yaml: where the settings the tensors cannot tell come from when not given: the released
        model's values (``"cosyvoice2"``, ``"cosyvoice3"``) or the model directory's CosyVoice YAML; a setting found
        nowhere raises ``ValueError`` naming it (see :mod:`fmjax.convert.settings`).

    Returns:
      ``(config, {"params": ...})`` for ``CosyVoice3Flow(config).apply``.

    Raises:
      StateDictError: naming every missing, unexpected and mis-shaped key.
    """
    chosen = resolve_settings("convert_flow_cv3", dict(static_chunk_size=chunk_size, num_left_chunks=num_left_chunks,
                                                       token_mel_ratio=token_mel_ratio),
                              preset=preset, cosyvoice_yaml=cosyvoice_yaml)
    chunk_size, num_left_chunks = chosen["static_chunk_size"], chosen["num_left_chunks"]
    token_mel_ratio = chosen["token_mel_ratio"]
    state = load_state_dict(source)
    estimator_sd = {k: v for k, v in state.items() if k.startswith(FLOW_PREFIX)}
    reader = StateDictReader({k: v for k, v in state.items() if not k.startswith(FLOW_PREFIX)}, what=_WHAT)
    problems, estimator, est_params = [], None, None
    table = reader.shape("input_embedding.weight")
    conv1 = reader.shape("pre_lookahead_layer.conv1.weight")
    spk = reader.shape("spk_embed_affine_layer.weight")
    missing = [name for name, shape in (("input_embedding.weight", table), ("pre_lookahead_layer.conv1.weight", conv1),
                                        ("spk_embed_affine_layer.weight", spk)) if shape is None]
    if missing:
        problems.append(f"state dict does not match the {_WHAT}: cannot infer its sizes, missing keys "
                        f"({len(missing)}): " + ", ".join(missing))
    if not estimator_sd:
        problems.append(f"state dict does not match the {_WHAT}: missing keys {FLOW_PREFIX}* (no estimator)")
    else:
        try:
            estimator, est_params = convert_dit(
                estimator_sd, mu_dim=table[1] if table else None, chunk_size=chunk_size * token_mel_ratio,
                num_left_chunks=num_left_chunks,
            )
        except StateDictError as e:
            problems.append(str(e).replace(":\n", f" (keys under {FLOW_PREFIX}):\n", 1))
    params = {}
    if not missing:
        (vocab, dim), (channels, _, k1), spk_in = table, conv1, spk[1]
        spk_out = estimator.spk_dim if estimator is not None else spk[0]
        params["input_embedding"] = {"embedding": reader.take("input_embedding.weight", (vocab, dim))}
        params["pre_lookahead_layer"] = {
            "conv1": _conv(reader, "pre_lookahead_layer.conv1", dim, channels, k1),
            "conv2": _conv(reader, "pre_lookahead_layer.conv2", channels, dim, LOOKAHEAD_CONV2_KERNEL),
        }
        params["spk_embed_affine_layer"] = {
            "kernel": reader.take("spk_embed_affine_layer.weight", (spk_out, spk_in)).T,
            "bias": reader.take("spk_embed_affine_layer.bias", (spk_out,)),
        }
    try:
        reader.finish()
    except StateDictError as e:
        problems.insert(0, str(e))
    if problems:
        raise StateDictError("\n".join(problems))
    params["decoder"] = est_params["params"]
    config = CosyVoice3FlowConfig(
        vocab_size=vocab, spk_embed_dim=spk_in, lookahead_channels=channels, pre_lookahead_len=k1 - 1,
        token_mel_ratio=token_mel_ratio, chunk_size=chunk_size, estimator=estimator,
    )
    return config, {"params": jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)}


def _conv(reader: StateDictReader, name: str, n_in: int, n_out: int, k: int) -> dict:
    kernel = reader.take(f"{name}.weight", (n_out, n_in, k)).transpose(2, 1, 0)  # [k, in, out]
    return {"kernel": kernel, "bias": reader.take(f"{name}.bias", (n_out,))}
