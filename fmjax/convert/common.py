"""Reading PyTorch state dicts without depending on torch, and validating them key by key.

A state dict arrives as a ``.pt``/``.pth`` checkpoint (needs the optional ``torch`` extra), an ``.npz`` or a
``.safetensors`` file, or an in-memory mapping of names to arrays. Converters pull tensors through a
:class:`StateDictReader`, which remembers what was taken, so that :meth:`StateDictReader.finish` can report
every missing, unexpected and mis-shaped key in one clear error.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping

import numpy as np


class StateDictError(ValueError):
    """A state dict does not match the model: lists missing, unexpected and mis-shaped keys."""


_SUFFIXES = {".npz": "an .npz archive of arrays", ".safetensors": "a safetensors file",
             **{s: "a PyTorch state dict (torch.save, read with weights_only=True)" for s in (".pt", ".pth", ".bin", ".ckpt")}}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0].split('. ')[0][:160]}" if text else type(err).__name__


def _read_file(path: pathlib.Path) -> dict:
    """The raw name -> tensor mapping of a state-dict file; any read failure is one StateDictError naming the path."""
    suffix = path.suffix.lower()
    expected = _SUFFIXES[suffix]
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {str(path)!r} needs PyTorch: pip install 'fmjax[torch]' "
                "(or convert it once to .npz/.safetensors elsewhere)"
            ) from e
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            raw = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of foreign files
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
                raw = raw["state_dict"]
    except Exception as err:  # noqa: BLE001 -- BadZipFile, EOFError, SafetensorError, UnpicklingError, ...
        if type(err).__name__ == "UnpicklingError":  # torch's text advises weights_only=False: we never do that
            raise StateDictError(f"source: {str(path)!r} is not readable as {expected}: it holds Python objects "
                                 "other than tensors, which a weights-only load refuses (fmjax never unpickles "
                                 "arbitrary objects); save the bare state dict") from err
        raise StateDictError(f"source: {str(path)!r} is not readable as {expected} ({_first_line(err)}); the file "
                             "is truncated, corrupt or of another kind") from err
    if not isinstance(raw, Mapping):
        raise StateDictError(f"source: {str(path)!r} holds a {type(raw).__name__}, expected {expected} "
                             "(a mapping of tensor names to tensors)")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not (hasattr(v, "shape") and hasattr(v, "dtype"))]
    if bad:
        raise StateDictError(f"source: {str(path)!r} is not a state dict: entries {bad[:5]} are not named tensors")
    return dict(raw)


def load_state_dict(source, *, prefix: str = "", check_finite: bool = True) -> dict[str, np.ndarray]:
    """Loads a state dict as ``{name: float32/int numpy array}``.

    Args:
      source: a path (``.pt``/``.pth``/``.bin``/``.ckpt`` via torch with ``weights_only=True``, ``.npz``,
        ``.safetensors``) or a mapping of names to arrays (numpy arrays or torch tensors).
      prefix: keep only keys starting with this prefix, with the prefix removed (e.g. ``"decoder.estimator."``).
      check_finite: reject NaN/inf in floating tensors (one host pass over the weights; on by default).

    Raises:
      FileNotFoundError: the path does not exist.
      StateDictError (a ValueError): the file cannot be read as its kind (naming the path and what was expected),
        it is not a mapping of named tensors, or a tensor holds NaN/inf (naming the key and the file).
      ValueError: unknown file type, or nothing left after the prefix filter.
      ImportError: a torch checkpoint was given but torch is not installed.
    """
    if isinstance(source, Mapping):
        raw, where = dict(source), "the given mapping"
    else:
        try:
            path = pathlib.Path(os.fspath(source))
        except TypeError:
            raise TypeError(f"source: expected a path or a mapping of names to arrays, got {type(source).__name__}") \
                from None
        if not path.exists():
            raise FileNotFoundError(f"source: state dict file {str(path)!r} does not exist")
        if path.is_dir():
            raise ValueError(f"source: expected a state dict file, {str(path)!r} is a directory")
        if path.suffix.lower() not in _SUFFIXES:
            raise ValueError(
                f"source: expected a .pt/.pth/.bin/.ckpt, .npz or .safetensors file, got {str(path)!r}"
            )
        raw, where = _read_file(path), repr(str(path))
    out = {}
    for name, value in raw.items():
        if not name.startswith(prefix):
            continue
        arr = _to_numpy(value)
        if check_finite and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            n = int(arr.size - np.isfinite(arr).sum())
            raise StateDictError(f"source: tensor {name!r} in {where} has {n} NaN/inf value(s) of {arr.size}; "
                                 "expected finite weights")
        out[name[len(prefix):]] = arr
    if not out:
        raise ValueError(f"source: no tensors found with prefix {prefix!r} in {where} (it has {len(raw)} tensors)")
    return out


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype in (np.float16, np.float64):
        arr = arr.astype(np.float32)
    return arr


class StateDictReader:
    """Hands out tensors by name, checks shapes, and reports every mismatch at the end.

    Example::

        r = StateDictReader(sd, what="CosyVoice2 estimator")
        w = r.take("final_proj.weight", (80, 256, 1))
        ...
        r.finish()   # raises StateDictError listing missing / unexpected / mis-shaped keys
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray], *, what: str = "model", ignore: Iterable[str] = ()):
        self._sd = dict(state_dict)
        self._what = what
        self._taken: set[str] = set()
        self._missing: list[str] = []
        self._misshaped: list[str] = []
        self._ignore = tuple(ignore)

    def __contains__(self, name: str) -> bool:
        return name in self._sd

    def keys(self) -> list[str]:
        return list(self._sd)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of a tensor without taking it (None when absent); used to infer configs."""
        return tuple(self._sd[name].shape) if name in self._sd else None

    def require_shapes(self, needed: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors a converter infers its config from (``{label: key}`` → ``{label: shape}``).

        Raises :class:`StateDictError` naming every absent key: without them the sizes cannot be inferred.
        """
        shapes = {label: self.shape(name) for label, name in needed.items()}
        missing = [needed[label] for label, s in shapes.items() if s is None]
        if missing:
            raise StateDictError(
                f"state dict does not match the {self._what}: cannot infer its sizes, "
                f"missing keys ({len(missing)}): " + ", ".join(missing)
            )
        return shapes

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Returns tensor ``name`` (marking it used). A missing or mis-shaped tensor is recorded, and a zero
        array of the expected shape is returned so that conversion can go on and report everything at once."""
        self._taken.add(name)
        if name not in self._sd:
            self._missing.append(name if shape is None else f"{name} (expected shape {tuple(shape)})")
            return np.zeros(shape if shape is not None else (), np.float32)
        arr = self._sd[name]
        if shape is not None and tuple(arr.shape) != tuple(shape):
            self._misshaped.append(f"{name}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")
            return np.zeros(shape, np.float32)
        return arr

    def skip(self, name: str) -> None:
        """Marks a tensor as known but unused (e.g. a buffer the port recomputes)."""
        self._taken.add(name)

    def finish(self) -> None:
        """Raises :class:`StateDictError` if any key was missing, mis-shaped or never taken."""
        unexpected = sorted(
            k for k in self._sd if k not in self._taken and not any(k.startswith(p) for p in self._ignore)
        )
        if not (self._missing or self._misshaped or unexpected):
            return
        lines = [f"state dict does not match the {self._what}:"]
        for title, items in (("missing", self._missing), ("mis-shaped", self._misshaped), ("unexpected", unexpected)):
            if items:
                shown = items[:20]
                more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
                lines.append(f"  {title} keys ({len(items)}): " + ", ".join(shown) + more)
        raise StateDictError("\n".join(lines))


def count_parameters(params) -> int:
    """Total number of scalars in a params pytree."""
    import jax

    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def float32_params(params) -> dict:
    """``{"params": params}`` with every leaf a float32 JAX array (what the converters return)."""
    import jax
    import jax.numpy as jnp

    return {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)}
