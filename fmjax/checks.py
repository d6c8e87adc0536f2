"""Host-side checks of user arrays at public entry points: finite values, floating dtypes, 0/1 masks, unit intervals.

Each check raises a ``ValueError``/``TypeError`` whose message names the argument, what was expected and what came.
Value checks need concrete arrays: under ``jax.jit`` (or ``vmap``/``grad``) the arguments are tracers and the
value checks are skipped -- check at the outermost, un-jitted call. Dtype and shape checks work on tracers too.

Cost: one reduction per array and call (numpy for host arrays; one cached jitted ``all(isfinite)`` per shape for
device arrays, so no array is copied to the host), nothing on the traced path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_concrete", "check_floating", "check_finite", "check_tree_finite", "check_mask", "check_in_range"]


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/vmap/grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


@jax.jit
def _device_stats(x):
    finite = jnp.isfinite(x)
    return jnp.sum(~finite), jnp.sum(jnp.isnan(x))


def _bad_counts(x) -> tuple[int, int]:
    """``(non-finite, NaN)`` counts of a floating array."""
    if isinstance(x, jax.Array) and any(d.platform != "cpu" for d in x.devices()):  # reduce where it lives
        bad, nan = jax.device_get(_device_stats(x))
        return int(bad), int(nan)
    a = np.asarray(x)
    finite = np.isfinite(a)
    return int(a.size - finite.sum()), int(np.isnan(a).sum())


def check_floating(name: str, x) -> None:
    """TypeError unless ``x`` has a floating dtype (an integer state would be truncated at every solver step)."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating array (e.g. float32), got dtype {dtype}")


def check_finite(name: str, x) -> None:
    """ValueError naming ``name`` when a concrete floating ``x`` holds NaN or inf; no-op for tracers/integers."""
    if x is None or not is_concrete(x):
        return
    dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
        return
    bad, nan = _bad_counts(x)
    if bad:
        size = int(np.prod(np.shape(x)))
        raise ValueError(f"{name}: expected finite values, got {nan} NaN and {bad - nan} inf of {size} "
                         f"(shape {tuple(np.shape(x))})")


def check_tree_finite(name: str, tree) -> None:
    """:func:`check_finite` on every leaf of a pytree, naming the leaf (``cond.mu``, ``cond['spk']``, ...)."""
    if tree is None:
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        check_finite(name + _path_str(path), leaf)


def _path_str(path) -> str:
    out = ""
    for k in path:
        if hasattr(k, "name"):
            out += f".{k.name}"
        elif hasattr(k, "key"):
            out += f"[{k.key!r}]"
        elif hasattr(k, "idx"):
            out += f"[{k.idx}]"
        else:
            out += str(k)
    return out


def check_mask(name: str, mask) -> None:
    """ValueError unless a concrete ``mask`` holds only 0 and 1 (bool masks pass; e.g. 0.5 is refused)."""
    if mask is None or not is_concrete(mask):
        return
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return
    bad = ~((m == 0) | (m == 1))
    if bad.any():
        values = np.unique(m[bad])[:3].tolist()
        raise ValueError(f"{name}: expected only 0/1 values (1 = valid), got {int(bad.sum())} other value(s), "
                         f"e.g. {values}")


def check_in_range(name: str, x, lo: float, hi: float) -> None:
    """ValueError unless every value of a concrete ``x`` is finite and within ``[lo, hi]``."""
    if x is None or not is_concrete(x):
        return
    check_finite(name, x)
    a = np.asarray(x, np.float64)
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], got min {a.min():.6g}, max {a.max():.6g}")
