"""k-means with k-means++ seeding (jitted): the unsupervised head of :class:`fmjax.data.tokenizer.SpeechTokenizer`.

Lloyd's algorithm from a k-means++ initialisation drawn from a PRNG key; both are jitted, with the iteration count
static and the objective (mean squared distance to the nearest centre) recorded at every iteration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fmjax.typing import Array, Float, Key

__all__ = ["kmeans_plus_plus", "lloyd", "fit_kmeans"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _sq_distances(x: Float[Array, "n d"], c: Float[Array, "k d"]) -> Float[Array, "n k"]:
    """``||x_i - c_j||²`` via the expansion, clamped at 0 against rounding."""
    xc = jnp.matmul(x, c.T, precision=_HIGHEST)  # [n, k]
    d = jnp.sum(x * x, axis=-1)[:, None] - 2.0 * xc + jnp.sum(c * c, axis=-1)[None, :]
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_plus_plus(x: Float[Array, "n d"], k: int, key: Key) -> Float[Array, "k d"]:
    """k-means++ seeding: the first centre uniformly, each next one with probability ∝ squared distance to the
    nearest centre chosen so far. Deterministic given ``key``."""
    n = x.shape[0]
    key_first, key_rest = jax.random.split(key)
    first = jax.random.randint(key_first, (), 0, n)
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])  # [k, d]
    nearest = _sq_distances(x, x[first][None])[:, 0]  # [n]

    def pick(i, carry):
        centres, nearest = carry
        logits = jnp.where(nearest > 0, jnp.log(jnp.where(nearest > 0, nearest, 1.0)), -jnp.inf)
        idx = jax.random.categorical(jax.random.fold_in(key_rest, i), logits)
        centres = centres.at[i].set(x[idx])
        nearest = jnp.minimum(nearest, _sq_distances(x, x[idx][None])[:, 0])
        return centres, nearest

    centres, _ = jax.lax.fori_loop(1, k, pick, (centres, nearest))
    return centres


@functools.partial(jax.jit, static_argnames=("n_iter",))
def lloyd(x: Float[Array, "n d"], centres: Float[Array, "k d"], n_iter: int):
    """``n_iter`` Lloyd iterations (assign to the nearest centre, move each centre to its members' mean; a
    centre with no members stays put, so the objective never increases).

    Returns:
      ``(centres [k, d], objective [n_iter + 1])``: the mean squared distance to the nearest centre before the
      first and after each iteration.
    """
    k = centres.shape[0]

    def objective(c):
        return jnp.mean(jnp.min(_sq_distances(x, c), axis=-1))

    def step(c, _):
        assign = jnp.argmin(_sq_distances(x, c), axis=-1)  # [n]
        sums = jax.ops.segment_sum(x, assign, num_segments=k)  # [k, d]
        counts = jax.ops.segment_sum(jnp.ones_like(assign, x.dtype), assign, num_segments=k)  # [k]
        c = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)
        return c, objective(c)

    start = objective(centres)
    centres, history = jax.lax.scan(step, centres, None, length=n_iter)
    return centres, jnp.concatenate([start[None], history])


def fit_kmeans(x: Float[Array, "n d"], k: int, key: Key, n_iter: int = 50):
    """k-means++ seeding then ``n_iter`` Lloyd iterations. Returns ``(centres [k, d], objective [n_iter + 1])``."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x: expected points of shape [n, d], got shape {x.shape}")
    if not (isinstance(k, int) and 1 <= k <= x.shape[0]):
        raise ValueError(f"k: expected an int in [1, n={x.shape[0]}], got {k!r}")
    if not (isinstance(n_iter, int) and n_iter >= 0):
        raise ValueError(f"n_iter: expected an int >= 0, got {n_iter!r}")
    return lloyd(x, kmeans_plus_plus(x, k, key), n_iter)
