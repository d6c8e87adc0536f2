"""Shared pieces of :mod:`fmjax.checkpoint`: directory names, errors, fingerprints and leaf tables of pytrees."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.typing import PyTree

CONFIG_FILE, CHECKPOINTS_DIR, PARAMS_DIR, QUARANTINE_DIR = "config.json", "checkpoints", "params", "corrupt_checkpoints"


class CheckpointError(ValueError):
    """A checkpoint cannot be read: missing, truncated, not a checkpoint, or its arrays fail verification."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was expected (also a ``FileNotFoundError``)."""


class IncompatibleCheckpointError(ValueError):
    """A readable checkpoint that does not fit: its tree structure, shapes or config differ from what is expected."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300]}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------- fingerprints
# the unsigned word a leaf's bits are read as, by item size (64-bit types split in two 32-bit words)
_WORD = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}


def _leaf_bits(x: jax.Array) -> jax.Array:
    """The raw bits of ``x`` as uint32 (narrow types widened, 64-bit types split in two words)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, _WORD[x.dtype.itemsize]).astype(jnp.uint32)


@jax.jit
def _fingerprint(tree):
    def one(x):
        bits = _leaf_bits(x).reshape(-1)
        weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        return jnp.sum(bits * weights, dtype=jnp.uint32)  # wraps mod 2^32: order-independent, exact

    return [one(x) for x in jax.tree.leaves(tree)]


def _host_fingerprint(x: np.ndarray) -> int:
    """:func:`_fingerprint` of one host array in numpy (uint32 arithmetic wraps mod 2³² the same way)."""
    if x.dtype == np.bool_:
        bits = x.astype(np.uint32)
    else:
        bits = np.ascontiguousarray(x).view(_WORD[x.dtype.itemsize]).astype(np.uint32)
    bits = bits.reshape(-1)
    weights = np.arange(bits.shape[0], dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return int(np.sum(bits * weights, dtype=np.uint32))


def fingerprint(tree: PyTree) -> list[int]:
    """One uint32 per leaf of ``tree``: ``Σ_i bits_i · (2i + 1) mod 2³²`` over the leaf's flattened bits.

    Leaves this process holds whole (single-device and fully addressable arrays, numpy arrays) are summed on the
    host in numpy: no compilation, which on CPU cost ~3 s per state structure. A tree with a leaf sharded over
    several processes is summed by one jitted program instead; both give the same integers."""
    leaves = jax.tree.leaves(tree)
    if all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return [_host_fingerprint(np.asarray(x)) for x in leaves]
    return [int(v) for v in jax.device_get(_fingerprint(tree))]


# ------------------------------------------------------------------------------------------ tree comparison
def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _named_leaves(tree) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return [("/".join(_key_name(k) for k in path), x) for path, x in leaves if x is not None]


def leaf_table(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"a/b/c": (shape, dtype)}`` of a pytree of arrays, ``ShapeDtypeStruct`` or orbax metadata. Dict keys,
    attributes and sequence indices all become path parts, so a dataclass state and its orbax dict compare equal."""
    return {name: (tuple(np.shape(x)), str(np.dtype(x.dtype))) for name, x in _named_leaves(tree)}


def compare_leaves(expected: dict, got: dict, limit: int = 8, *, dtypes: bool = True) -> list[str]:
    """Differences between two :func:`leaf_table` s: missing, unexpected and mis-shaped leaves (at most
    ``limit`` of each kind named; ``dtypes=False`` compares shapes only); empty when they agree."""
    if not dtypes:
        expected = {k: (v[0], "") for k, v in expected.items()}
        got = {k: (v[0], "") for k, v in got.items()}
    def show(items):
        return ", ".join(items[:limit]) + (f" ... and {len(items) - limit} more" if len(items) > limit else "")

    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shaped = [f"{k}: expected {expected[k][1]}{list(expected[k][0])}, got {got[k][1]}{list(got[k][0])}"
              for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
    return [f"{title} ({len(items)}): {show(items)}" for title, items in
            (("missing leaves", missing), ("unexpected leaves", unexpected), ("mis-shaped leaves", shaped)) if items]
