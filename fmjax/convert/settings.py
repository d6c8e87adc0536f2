"""Settings a state dict cannot tell: the converters never guess them.

A checkpoint's tensors give every width and depth, but not the attention head count of the CosyVoice2 estimator
(``to_q`` is ``heads·head_dim`` wide either way), the streaming chunk, the left-chunk count, HiFT's sample rate and
hop, ... A converter takes each such setting from, in order:

1. its keyword argument;
2. ``cosyvoice_yaml=``: the model directory's own CosyVoice config (``cosyvoice2.yaml`` / ``cosyvoice3.yaml``, the file next
   to ``flow.pt`` and ``hift.pt`` in a CosyVoice model directory), read without CosyVoice (the ``!new:`` / ``!ref``
   tags are resolved here);
3. ``preset=``: the released model's values (``"cosyvoice2"``, ``"cosyvoice3"``), stated in :data:`PRESETS`.

A setting found nowhere is an error naming the argument (no silent default). The chosen values end up in the
returned config, and are logged (``fmjax.convert`` logger, INFO) with where each came from.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import re
from typing import Any

__all__ = ["PRESETS", "MEANINGS", "read_cosyvoice_yaml", "resolve_settings"]

log = logging.getLogger("fmjax.convert")

PRESETS: dict[str, dict[str, Any]] = {
    # CosyVoice2-0.5B as released (cosyvoice2.yaml at CosyVoice ace7c47)
    "cosyvoice2": {"static_chunk_size": 25, "num_left_chunks": -1, "decoder_heads": 8, "chunk_size": 50,
                   "num_heads": 8, "sampling_rate": 24000, "samples_per_frame": 480, "hop_length": 4},
    # Fun-CosyVoice3-0.5B as released (cosyvoice3.yaml): chunks in tokens for the flow, in frames for the DiT
    "cosyvoice3": {"static_chunk_size": 25, "num_left_chunks": -1, "token_mel_ratio": 2, "chunk_size": 50,
                   "sampling_rate": 24000,
                   "samples_per_frame": 480, "hop_length": 4},
}

MEANINGS = {
    "static_chunk_size": "the streaming chunk in tokens (CosyVoice2: 25)",
    "chunk_size": "the estimator's streaming chunk in frames (CosyVoice2: 50 = 25 tokens x 2)",
    "num_left_chunks": "the left chunks a chunk sees, -1 = all (CosyVoice2: -1)",
    "decoder_heads": "the estimator's attention head count (CosyVoice2: 8)",
    "num_heads": "the attention head count (CosyVoice2's estimator: 8)",
    "token_mel_ratio": "mel frames per token (CosyVoice3: 2)",
    "sampling_rate": "the output sample rate in Hz (CosyVoice2: 24000)",
    "samples_per_frame": "output samples per mel frame (CosyVoice2: 480)",
    "hop_length": "the iSTFT hop (CosyVoice2: 4)",
}


def read_cosyvoice_yaml(path) -> dict[str, Any]:
    """The settings fmjax needs from a CosyVoice model config (``cosyvoice2.yaml``-style hyperpyyaml), as a flat dict
    with the converters' argument names; keys that the file does not define are left out."""
    import yaml

    path = pathlib.Path(os.fspath(path))
    try:
        text = path.read_text()
    except OSError as err:
        raise FileNotFoundError(f"cosyvoice_yaml: cannot read the CosyVoice config {str(path)!r} ({err})") from None

    class Loader(yaml.SafeLoader):
        pass

    def node(loader, suffix, n):  # !new:cls / !name:fn / !apply:fn -> a mapping (its arguments)
        if isinstance(n, yaml.MappingNode):
            return loader.construct_mapping(n, deep=True)
        if isinstance(n, yaml.SequenceNode):
            return loader.construct_sequence(n, deep=True)
        return loader.construct_scalar(n)

    Loader.add_multi_constructor("!new:", node)
    Loader.add_multi_constructor("!name:", node)
    Loader.add_multi_constructor("!apply:", node)
    Loader.add_constructor("!ref", lambda loader, n: ("__ref__", loader.construct_scalar(n)))
    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 (a restricted SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ValueError(f"cosyvoice_yaml: {str(path)!r} is not a readable CosyVoice YAML config ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"cosyvoice_yaml: {str(path)!r} is not a CosyVoice model config (no top-level mapping)")

    def value(v):
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "__ref__":  # "<a> * <b>" arithmetic of top-level ints
            expr = re.sub(r"<([\w.]+)>", lambda m: repr(value(data.get(m.group(1)))), v[1])
            if not re.fullmatch(r"[\d\s*+\-/().]+", expr):
                raise ValueError(f"cosyvoice_yaml: cannot resolve !ref {v[1]!r} in {str(path)!r}")
            return eval(expr, {"__builtins__": {}})  # noqa: S307 (digits and operators only, checked above)
        return v

    def get(*keys):
        cur = data
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return value(cur)

    out = {"static_chunk_size": value(data.get("chunk_size")), "num_left_chunks": value(data.get("num_decoding_left_chunks")),
           "token_mel_ratio": value(data.get("token_mel_ratio")), "sampling_rate": value(data.get("sample_rate"))}
    estimator = get("flow", "decoder", "estimator") or {}
    if isinstance(estimator, dict):
        heads = value(estimator.get("num_heads", estimator.get("heads")))
        out.update(decoder_heads=heads, num_heads=heads)
        if estimator.get("static_chunk_size") is not None:
            out["chunk_size"] = value(estimator["static_chunk_size"])
    hift = data.get("hift") if isinstance(data.get("hift"), dict) else {}
    hop = value((hift.get("istft_params") or {}).get("hop_len")) if isinstance(hift, dict) else None
    rates = value(hift.get("upsample_rates")) if isinstance(hift, dict) else None
    if hop is not None:
        out["hop_length"] = int(hop)
        if rates:
            out["samples_per_frame"] = int(math.prod(int(r) for r in rates) * int(hop))
    return {k: v for k, v in out.items() if v is not None}


def resolve_settings(what: str, given: dict[str, Any], *, preset: str | None = None,
                     cosyvoice_yaml=None) -> dict[str, Any]:
    """Fills the ``None`` entries of ``given`` (argument name -> value) from ``cosyvoice_yaml`` (a CosyVoice YAML
    path), then ``preset``; raises ``ValueError`` naming every setting still missing. ``what`` names the converter."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)} or None, got {preset!r}")
    from_yaml = read_cosyvoice_yaml(cosyvoice_yaml) if cosyvoice_yaml is not None else {}
    out, source = {}, {}
    for name, value in given.items():
        if value is not None:
            out[name], source[name] = value, "argument"
        elif name in from_yaml:
            out[name], source[name] = from_yaml[name], f"config {os.fspath(cosyvoice_yaml)}"
        elif preset is not None and name in PRESETS[preset]:
            out[name], source[name] = PRESETS[preset][name], f"preset {preset}"
    missing = [n for n in given if n not in out]
    if missing:
        lines = [f"{n}: not stored in the state dict: pass {n}=... ({MEANINGS.get(n, 'see the docstring')})"
                 for n in missing]
        raise ValueError(f"{what}: " + "; ".join(lines) + ", or cosyvoice_yaml='<model dir>/cosyvoice2.yaml', or "
                         "preset='cosyvoice2' / 'cosyvoice3' for the released models")
    log.info("%s: %s", what, ", ".join(f"{n}={out[n]!r} ({source[n]})" for n in given))
    return out
