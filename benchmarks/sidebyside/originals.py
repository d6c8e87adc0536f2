"""Imports the original CosyVoice / Matcha-TTS classes from a user's checkout (never vendored, never committed).

    orig = load_originals("/path/to/CosyVoice")            # Matcha-TTS at <checkout>/third_party/Matcha-TTS
    orig.CausalConditionalDecoder, orig.CausalMaskedDiffWithXvec, orig.HiFTGenerator, orig.CosyVoice2Model, ...

The checkout and its Matcha-TTS submodule go to the front of ``sys.path``. The classes timed here need only
``torch``, ``einops``, ``conformer``, ``diffusers==0.29.0``, ``scipy`` and ``omegaconf``; four modules that
``import`` heavier packages at their top but are never used by these procedures are replaced by placeholders
**only when their own import fails** (what was replaced is in ``Originals.shims``):

=================================  ==========================================  ==================================
module                             imports at the top                          used by the timed classes for
=================================  ==========================================  ==================================
``cosyvoice.utils.onnx``           onnxruntime, torchaudio                     ``online_feature`` (False here)
``cosyvoice.utils.file_utils``     torchaudio (and ``logging.basicConfig``)     nothing (TensorRT/vLLM export)
``cosyvoice.llm.llm``              transformers                                nothing (the LLM)
``matcha.utils`` (``pylogger``)    lightning, hydra, rich                      ``get_pylogger`` (a logger)
=================================  ==========================================  ==================================

A placeholder raises a clear ``RuntimeError`` if anything in it is ever called.
"""

from __future__ import annotations

import importlib
import logging
import os
import pathlib
import subprocess
import sys
import types
from dataclasses import dataclass, field

MATCHA_SUBDIR = ("third_party", "Matcha-TTS")


@dataclass
class Originals:
    """The original classes and functions, and where they came from."""

    checkout: pathlib.Path
    matcha: pathlib.Path
    commit: str | None
    matcha_commit: str | None
    shims: list[str] = field(default_factory=list)
    mods: dict[str, types.ModuleType] = field(default_factory=dict)

    def __getattr__(self, name):  # orig.HiFTGenerator etc.
        for mod in self.__dict__.get("mods", {}).values():
            if hasattr(mod, name):
                return getattr(mod, name)
        raise AttributeError(f"no original named {name!r} in {sorted(self.__dict__.get('mods', {}))}")

    def facts(self) -> dict:
        import torch

        return {"cosyvoice_checkout": str(self.checkout), "cosyvoice_commit": self.commit,
                "matcha_commit": self.matcha_commit, "shimmed_modules": list(self.shims), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads()}


class _Unavailable:
    """Stands for an object of a module that could not be imported; fails loudly if it is ever used."""

    def __init__(self, qualname: str, why: str):
        self._qualname, self._why = qualname, why

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._qualname} is a placeholder ({self._why}); the side-by-side benchmarks never "
                           "need it")

    def __repr__(self):
        return f"<placeholder {self._qualname}>"


def _placeholder(name: str, why: str, attrs: dict | None = None, path: pathlib.Path | None = None):
    mod = types.ModuleType(name, f"placeholder for {name} ({why})")
    mod.__dict__.update(attrs or {})
    if path is not None:
        mod.__path__ = [str(path)]  # real submodules can still be imported

    def missing(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{name}.{attr}", why)

    mod.__getattr__ = missing
    return mod


def _git_commit(path: pathlib.Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _import_or_shim(name: str, why: str, attrs: dict, shims: list[str], path: pathlib.Path | None = None):
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except (ImportError, OSError, RuntimeError) as e:  # a missing or broken heavy dependency
        sys.modules[name] = _placeholder(name, f"{why}; import failed: {e}", attrs, path)
        shims.append(name)


def _check_not_shadowed(package: str, root: pathlib.Path) -> None:
    mod = sys.modules.get(package)
    if mod is None:
        return
    where = pathlib.Path(getattr(mod, "__file__", "") or "").resolve()
    if root.resolve() not in where.parents:
        raise RuntimeError(f"{package!r} is already imported from {str(where)!r}, not from {str(root)!r}: "
                           "load the originals before anything imports it (or in a fresh process)")


def load_originals(checkout, matcha=None) -> Originals:
    """Imports the CosyVoice2 token2wav classes from ``checkout`` (and Matcha-TTS from ``matcha``).

    Args:
      checkout: a CosyVoice checkout (the folder that holds ``cosyvoice/``).
      matcha: its Matcha-TTS (the folder that holds ``matcha/``); default ``<checkout>/third_party/Matcha-TTS``.

    Raises:
      FileNotFoundError: a folder is missing or is not what it should be.
      ImportError: a package the timed classes need is missing (the message says which to install).
      RuntimeError: ``cosyvoice`` or ``matcha`` was already imported from somewhere else.
    """
    checkout = pathlib.Path(os.fspath(checkout)).expanduser().resolve()
    matcha = (checkout.joinpath(*MATCHA_SUBDIR) if matcha is None else pathlib.Path(os.fspath(matcha))).expanduser()
    matcha = matcha.resolve()
    if not (checkout / "cosyvoice" / "flow" / "flow.py").is_file():
        raise FileNotFoundError(f"checkout: {str(checkout)!r} is not a CosyVoice checkout (no cosyvoice/flow/flow.py)")
    if not (matcha / "matcha" / "models" / "components" / "decoder.py").is_file():
        raise FileNotFoundError(
            f"matcha: {str(matcha)!r} is not a Matcha-TTS checkout (no matcha/models/components/decoder.py); "
            "run `git submodule update --init` in the CosyVoice checkout or pass its path"
        )
    for need in ("torch", "einops", "conformer", "diffusers", "scipy", "omegaconf"):
        if importlib.util.find_spec(need) is None:
            raise ImportError(f"the side-by-side benchmarks need {need!r}: pip install 'fmjax[torch]' omegaconf "
                              "(torch==2.13.0, einops, conformer==0.3.2, diffusers==0.29.0, scipy, omegaconf)")
    _check_not_shadowed("cosyvoice", checkout)
    _check_not_shadowed("matcha", matcha)
    for p in (str(matcha), str(checkout)):  # checkout first, then Matcha (CosyVoice's own sys.path setup)
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    shims: list[str] = []
    _import_or_shim("cosyvoice.utils.onnx", "needs onnxruntime/torchaudio", {
        "online_feature": False, "onnx_path": None, "embedding_extractor": None}, shims)
    _import_or_shim("cosyvoice.utils.file_utils", "needs torchaudio", {"logging": logging}, shims)
    _import_or_shim("cosyvoice.llm.llm", "needs transformers", {}, shims)
    try:
        importlib.import_module("matcha.utils.pylogger")
    except (ImportError, OSError, RuntimeError) as e:
        why = f"needs lightning/hydra; import failed: {e}"
        for name in [n for n in sys.modules if n == "matcha.utils" or n.startswith("matcha.utils.")]:
            del sys.modules[name]
        sys.modules["matcha.utils"] = _placeholder("matcha.utils", why, {}, matcha / "matcha" / "utils")
        sys.modules["matcha.utils.pylogger"] = _placeholder("matcha.utils.pylogger", why,
                                                            {"get_pylogger": logging.getLogger})
        shims += ["matcha.utils", "matcha.utils.pylogger"]
    names = ["cosyvoice.flow.decoder", "cosyvoice.flow.flow_matching", "cosyvoice.flow.flow",
             "cosyvoice.transformer.upsample_encoder", "cosyvoice.hifigan.generator", "cosyvoice.hifigan.f0_predictor",
             "cosyvoice.utils.mask", "cosyvoice.utils.common", "cosyvoice.cli.model"]
    mods = {n: importlib.import_module(n) for n in names}
    import omegaconf

    mods["omegaconf"] = omegaconf
    return Originals(checkout, matcha, _git_commit(checkout), _git_commit(matcha), shims, mods)
