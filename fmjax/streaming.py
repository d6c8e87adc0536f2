"""Streaming a flow-matching sampler chunk by chunk, with explicit per-evaluation estimator caches.

Offline, a chunk-masked estimator at ODE step ``s`` maps the whole sequence ``x_s`` to ``v_s``, and the output
frames of chunk ``k`` depend only on frames of chunks ``≤ k``. So the ODE can run chunk by chunk: for chunk
``k`` run *all* steps, where each velocity evaluation continues from the estimator cache that the same
evaluation (same step, same solver stage) left after chunk ``k − 1``. The sampler state therefore holds one
estimator cache per step and stage, stacked on leading ``[n, stages]`` axes; its shapes never depend on how
far the stream has gone, so one compiled chunk step serves the whole stream.

The noise of a frame is taken from a caller-supplied array by absolute frame index (CosyVoice's fixed noise,
:func:`fmjax.noise.cosyvoice_noise`), so it never depends on the chunking.

**No copies of the rings.** The K/V ring buffers (:class:`fmjax.nn.attention.KVCache`) of all evaluations are
handed to each evaluation as one stack of rows with ``row0`` naming its rows (``[n·stages·b]`` rows, a reshape of
the ``[n, stages, b]`` leading axes): the estimator writes its chunk into the stack in place and reads only its own
rows, so the loop never copies an evaluation's rings out and back (at full size that copy was about a fifth of
a chunk's time). Every other leaf (conv histories, small) is sliced out and written back per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fmjax.samplers import Solver, _checked, _combine, _stage_inputs, _times, get_solver
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
        x, caches = carry
        t, dt = grid[s], grid[s + 1] - grid[s]
        end = {"r": _times(t + dt, x)} if getattr(solver, "interval", False) else {}  # a MeanFlow step's end
        ks = []
        for i in range(solver.stages):  # as samplers.rk_step_cached, with the evaluation's cache a view
            xi = _stage_inputs(solver, dt, x, ks, i)
            v, new = velocity(_times(t + solver.c[i] * dt, x), xi, cond_chunk, _evaluation_cache(caches, s, i), **end)
            ks.append(_checked(v, x))
            caches = _store_evaluation_cache(caches, new, s, i)
        return _combine(solver, dt, x, ks).astype(x0_chunk.dtype), caches

    return jax.lax.fori_loop(0, n, body, (x0_chunk, caches))


def _is_kv(a) -> bool:
    from fmjax.nn.attention import KVCache  # the streaming core does not import the nn blocks at module level

    return isinstance(a, KVCache)


def _evaluation_cache(caches: PyTree, s, i: int) -> PyTree:
    """Evaluation ``(s, i)``'s cache: K/V rings as row views of the whole stack (``row0``), other leaves sliced."""
    def view(a):
        if _is_kv(a):
            n, stages, b = a.pos.shape[:3]
            flat = [x.reshape((n * stages * b,) + x.shape[3:]) for x in (a.keys, a.values, a.pos, a.count)]
            return a._replace(keys=flat[0], values=flat[1], pos=flat[2], count=flat[3],
                              row0=((s * stages + i) * b).astype(jnp.int32))
        return jax.lax.dynamic_index_in_dim(a, s, 0, keepdims=False)[i]

    return jax.tree_util.tree_map(view, caches, is_leaf=_is_kv)


def _store_evaluation_cache(caches: PyTree, new: PyTree, s, i: int) -> PyTree:
    """The stack after evaluation ``(s, i)``: its rings were written in place; other leaves are written back."""
    def store(a, u):
        if _is_kv(a):
            return a._replace(**{f: getattr(u, f).reshape(getattr(a, f).shape) for f in ("keys", "values", "pos",
                                                                                         "count")})
        step = jax.lax.dynamic_index_in_dim(a, s, 0, keepdims=False).at[i].set(u)
        return jax.lax.dynamic_update_index_in_dim(a, step, s, 0)

    return jax.tree_util.tree_map(store, caches, new, is_leaf=_is_kv)


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
    ``jax.eval_shape`` of the module's ``init_cache``); ``what`` describes the expected configuration. A K/V ring given
    as a row view of a stack (``row0`` set, see :func:`sample_chunk`) is checked at its call's rows."""
    from fmjax.nn.attention import KVCache

    got, tree = jax.tree_util.tree_flatten(cache, is_leaf=_is_kv)
    want, want_tree = jax.tree_util.tree_flatten_with_path(expected, is_leaf=_is_kv)
    if tree != want_tree:
        raise ValueError(f"{name}: its structure does not match init_cache ({what}); was it made for another "
                         "model or configuration?")
    for (path, w), g in zip(want, got):
        if _is_kv(g) and g.row0 is not None and _is_kv(w):
            rows = w.pos.shape[0]
            if g.pos.shape[0] < rows:
                raise ValueError(f"{name}{jax.tree_util.keystr(path)}: a stack of {g.pos.shape[0]} rows cannot hold "
                                 f"the call's {rows} ({what})")
            g = KVCache(*(jax.ShapeDtypeStruct((rows,) + tuple(jnp.shape(a))[1:], jnp.result_type(a))
                          for a in (g.keys, g.values, g.pos, g.count)))
        pairs = zip(jax.tree_util.tree_leaves_with_path(w), jax.tree_util.tree_leaves(g)) if _is_kv(w) else \
            [(((), w), g)]
        for (sub, want_leaf), leaf in pairs:
            if tuple(jnp.shape(leaf)) != tuple(want_leaf.shape) or jnp.result_type(leaf) != want_leaf.dtype:
                raise ValueError(f"{name}{jax.tree_util.keystr(tuple(path) + tuple(sub))}: expected "
                                 f"{want_leaf.dtype}{list(want_leaf.shape)} ({what}), got "
                                 f"{jnp.result_type(leaf)}{list(jnp.shape(leaf))}")
