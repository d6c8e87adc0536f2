"""The benchmarks' side-by-side switch: the ``--cosyvoice`` / ``--matcha`` options, loading the originals, and the
same torch weights converted into fmjax through :mod:`fmjax.convert`.

    ap = argparse.ArgumentParser(); add_options(ap); args = ap.parse_args()
    orig = originals_or_exit(ap, args)            # None without --cosyvoice: the benchmark runs fmjax alone
    est, sd = build.build_estimator(orig, size="full")
    cfg, params = fmjax_estimator(sd)             # the same weights, through fmjax.convert.causal_unet
    diff = max_abs_diff(tl(v_fmjax), v_torch)      # tl: fmjax (B, T, C) <-> torch (B, C, T)

Nothing here imports CosyVoice unless ``--cosyvoice`` is given; torch is imported only then.
"""

from __future__ import annotations

import argparse
import inspect
import os

import numpy as np

AGREE_TOL = 1e-3  # the bound on |fmjax - torch| for a benchmark's sanity check (outputs are O(1))


def add_options(ap: argparse.ArgumentParser) -> None:
    """Adds ``--cosyvoice PATH`` (default ``$COSYVOICE_DIR``) and ``--matcha PATH``."""
    ap.add_argument("--cosyvoice", default=os.environ.get("COSYVOICE_DIR"),
                    help="a CosyVoice checkout: also build the original modules in torch (random weights), convert "
                         "the same weights into fmjax and time both interleaved (default $COSYVOICE_DIR; none: fmjax "
                         "alone)")
    ap.add_argument("--matcha", default=None,
                    help="its Matcha-TTS checkout (default <cosyvoice>/third_party/Matcha-TTS)")


def originals_or_exit(ap: argparse.ArgumentParser, args):
    """The originals (:func:`sidebyside.originals.load_originals`) when ``--cosyvoice`` is given, else None; a bad path
    or a missing package is a one-line usage error."""
    if not args.cosyvoice:
        if args.matcha:
            ap.error("--matcha: given without --cosyvoice")
        return None
    from sidebyside.originals import load_originals

    try:
        orig = load_originals(args.cosyvoice, args.matcha)
    except (FileNotFoundError, ImportError, RuntimeError) as e:
        ap.error(str(e))
    print(f"originals: {orig.facts()}", flush=True)
    return orig


def _convert(fn, sd, **kwargs):
    """``fn(sd, **kwargs)``, adding ``preset="cosyvoice2"`` where the converter takes one (the settings a state dict
    cannot tell; CosyVoice2's released values are those the builders use)."""
    if "preset" in inspect.signature(fn).parameters:
        kwargs.setdefault("preset", "cosyvoice2")
    return fn(sd, **kwargs)


def fmjax_estimator(sd: dict):
    """``(CausalUNetConfig, params)`` of a full-size estimator state dict (``convert_causal_unet``)."""
    from fmjax.convert.causal_unet import convert_causal_unet

    return _convert(convert_causal_unet, sd)


def fmjax_flow(sd: dict):
    """``(Token2MelConfig, params)`` of a full-size ``CausalMaskedDiffWithXvec`` state dict (``convert_flow``)."""
    from fmjax.convert.flow import convert_flow

    return _convert(convert_flow, sd)


def fmjax_hift(sd: dict):
    """``(HiFTConfig, params)`` of a full-size ``HiFTGenerator`` state dict (``convert_hift``)."""
    from fmjax.convert.hift import convert_hift

    return _convert(convert_hift, sd)


def tl(a) -> np.ndarray:
    """Swaps the last two axes: torch ``(B, C, T)`` <-> fmjax ``(B, T, C)``."""
    return np.swapaxes(np.asarray(a), -1, -2)


def max_abs_diff(a, b) -> float:
    """``max |a - b|`` in float64 (inf when the shapes differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")


def agreement(name: str, ours, theirs, tol: float = AGREE_TOL) -> dict:
    """Prints and returns ``{"check", "max_abs_diff", "torch_std", "tol", "ok"}`` for two outputs."""
    d = max_abs_diff(ours, theirs)
    row = {"check": name, "max_abs_diff": d, "torch_std": float(np.std(np.asarray(theirs, np.float64))), "tol": tol,
           "ok": bool(d <= tol)}
    print(f"agreement {name}: max |fmjax - torch| = {d:.3g} (torch std {row['torch_std']:.3g}, tol {tol:g}) "
          f"{'ok' if row['ok'] else 'NOT OK'}", flush=True)
    return row
