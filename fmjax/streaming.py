"""Streaming a flow-matching sampler chunk by chunk, with explicit per-evaluation estimator caches.

Offline, a chunk-masked estimator at ODE step ``s`` maps the whole sequence ``x_s`` to ``v_s``, and the output
frames of chunk ``k`` depend only on frames of chunks ``≤ k``. So the ODE can run chunk by chunk: for chunk
``k`` run *all* steps, where each velocity evaluation continues from the estimator cache that the same
evaluation (same step, same solver stage) left after chunk ``k − 1``. The sampler state therefore holds one
estimator cache per step and stage, stacked on leading ``[n, stages]`` axes; its shapes never depend on how
far the stream has gone, so one compiled chunk step serves the whole stream.

The noise of a frame is taken from a caller-supplied array by absolute frame index (CosyVoice's fixed noise,
:func:`fmjax.noise.cosyvoice_noise`), so it never depends on the chunking.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fmjax.samplers import Solver, get_solver, rk_step_cached
from fmjax.timesteps import validate_grid
from fmjax.typing import Array, Float, Int, PyTree

__all__ = ["init_sampler_caches", "sample_chunk", "take_frames", "cache_nbytes", "keep_idle_rows", "check_cache_shapes"]


def init_sampler_caches(estimator_cache: PyTree, n_steps: int, solver: str | Solver = "euler") -> PyTree:
    """Stacks an estimator cache for every ODE step and solver stage: leaves ``[n, stages, ...]``.

    Args:
      estimator_cache: a fresh cache of the estimator (for CFG by batch doubling: one with ``2b`` rows).
      n_steps: ODE steps ``n`` (the grid has ``n + 1`` points).
      solver: the solver whose stages each need a cache.
    """
    if not (isinstance(n_steps, int) and n_steps >= 1):
        raise ValueError(f"n_steps: expected an int >= 1, got {n_steps!r}")
    stages = get_solver(solver).stages
    return jax.tree_util.tree_map(
        lambda c: jnp.broadcast_to(c, (n_steps, stages, *jnp.shape(c))).copy(), estimator_cache
    )


def sample_chunk(
    velocity: Callable,
    x0_chunk: Float[Array, "b c ..."],
    cond_chunk: PyTree,
    grid,
    caches: PyTree,
    solver: str | Solver = "euler",
) -> tuple[Float[Array, "b c ..."], PyTree]:
    """Runs the whole ODE for one chunk, continuing every evaluation's estimator cache.

    Args:
      velocity: ``velocity(t [b], x_chunk, cond_chunk, cache) -> (v_chunk, cache)`` (wrap it with
        :func:`fmjax.samplers.classifier_free_guidance_cached` for CFG).
      x0_chunk: ``[b, c, ...]`` the chunk's noise.
      cond_chunk: the chunk's conditions (pytree, batch first).
      grid: ``[n + 1]`` time grid (data: new values do not recompile).
      caches: from :func:`init_sampler_caches` or the previous chunk: leaves ``[n, stages, ...]``.
      solver: any fixed-step solver.

    Returns:
      ``(x1_chunk, new_caches)``.
    """
    solver = get_solver(solver)
    grid = validate_grid(grid)
    grid = jnp.asarray(grid, jnp.result_type(x0_chunk.dtype, jnp.float32))
    n = grid.shape[0] - 1
    for leaf in jax.tree_util.tree_leaves(caches):
        if leaf.shape[:2] != (n, solver.stages):
            raise ValueError(
                f"caches: expected leading axes (n={n}, stages={solver.stages}) matching the grid and solver, "
                f"got {leaf.shape[:2]}"
            )

    def body(s, carry):
        # The stacked caches ride in the loop carry: step s reads slice s and writes it back in place. (As scan
        # xs/ys they would be copied in and out and held twice: at full size that doubles the chunk time.)
        x, caches = carry
        cache_s = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, s, 0, keepdims=False), caches)
        x, cache_s = rk_step_cached(solver, velocity, grid[s], grid[s + 1] - grid[s], x, cond_chunk, cache_s)
        caches = jax.tree_util.tree_map(lambda a, u: jax.lax.dynamic_update_index_in_dim(a, u, s, 0), caches, cache_s)
        return x.astype(x0_chunk.dtype), caches

    return jax.lax.fori_loop(0, n, body, (x0_chunk, caches))


def take_frames(noise: Float[Array, "T ..."], start: Int[Array, ""], length: int) -> Float[Array, "c ..."]:
    """``noise[start : start + length]`` along axis 0 with a traced ``start`` (static ``length``)."""
    return jax.lax.dynamic_slice_in_dim(noise, start, length, axis=0)


def cache_nbytes(cache: PyTree) -> int:
    """Bytes held by a cache pytree (constant over a stream by construction)."""
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(cache)))


def keep_idle_rows(active: Array, new_cache: PyTree, old_cache: PyTree) -> PyTree:
    """``new_cache`` with the rows that had nothing to compute (``active [b]`` False) reset to ``old_cache``.

    K/V ring buffers (:class:`fmjax.nn.attention.KVCache`) are passed through untouched: an idle row's write leaves
    them correct by construction (see :mod:`fmjax.nn.attention`), so the large buffers are never copied; every other
    leaf (conv histories, small per-row state) must have the batch axis first and is selected row by row.
    """
    from fmjax.nn.attention import KVCache  # the streaming core does not import the nn blocks at module level

    def select(new, old):
        if isinstance(new, KVCache):
            return new
        return jnp.where(active.reshape((-1,) + (1,) * (jnp.ndim(new) - 1)), new, old)

    return jax.tree_util.tree_map(select, new_cache, old_cache, is_leaf=lambda a: isinstance(a, KVCache))


def check_cache_shapes(cache: PyTree, expected: PyTree, what: str, name: str = "cache") -> None:
    """Raises ``ValueError`` unless ``cache`` has the structure, leaf shapes and dtypes of ``expected`` (e.g. the
    ``jax.eval_shape`` of the module's ``init_cache``); ``what`` describes the expected configuration."""
    if jax.tree_util.tree_structure(cache) != jax.tree_util.tree_structure(expected):
        raise ValueError(f"{name}: its structure does not match init_cache ({what}); was it made for another "
                         "model or configuration?")
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree_util.tree_leaves(cache)):
        if tuple(jnp.shape(got)) != tuple(want.shape) or jnp.result_type(got) != want.dtype:
            raise ValueError(f"{name}{jax.tree_util.keystr(path)}: expected {want.dtype}{list(want.shape)} "
                             f"({what}), got {jnp.result_type(got)}{list(jnp.shape(got))}")
