"""Fixed-step ODE samplers for flow matching, run as a ``lax.scan`` over an explicit time grid.

A solver is an explicit Runge-Kutta tableau (``a``, ``b``, ``c``) with its order, so Euler, midpoint, Heun
and RK4 share one stepping routine, and a streaming sampler can hold one estimator cache per stage of every
step. The estimator enters only as a closure:

* offline: ``velocity(t [b], x [b, ...], cond) -> v [b, ...]``
* streaming: ``velocity(t, x, cond, cache) -> (v, cache)``

The grid is data (``[n + 1]``, increasing from 0 to 1): a jitted sampler is compiled once per grid *length*,
and changing the grid values reuses the compiled code.

A MeanFlow student (:mod:`fmjax.meanflow`) predicts the *average* velocity ``u(x, r, t)`` over a step ``[t, r]``;
its solver :data:`MEANFLOW` (``"meanflow"``) is Euler's tableau with ``interval=True``: each step calls the
closure with the step's end as a keyword, ``velocity(t, x, cond, r=t + dt)`` (streaming:
``velocity(t, x, cond, cache, r=...)``), and steps ``x_r = x_t + (r − t)·u`` -- exact for an exact ``u``, at
any number of steps. It goes through the same grids, :func:`sample`, :class:`SamplerConfig` and per-step
streaming caches as the Runge-Kutta solvers (it is kept out of :data:`SOLVERS`, whose closures take no ``r``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.checks import check_finite, check_floating, check_tree_finite
from fmjax.cond import null_condition
from fmjax.timesteps import validate_grid
from fmjax.typing import Array, Float

__all__ = [
    "Solver", "EULER", "MIDPOINT", "HEUN", "RK4", "MEANFLOW", "SOLVERS", "get_solver", "rk_step", "rk_step_cached",
    "sample", "SampleAux", "classifier_free_guidance", "classifier_free_guidance_cached", "count_nfe",
    "SamplerConfig",
]


@dataclasses.dataclass(frozen=True)
class Solver:
    """An explicit Runge-Kutta method: ``k_i = v(t + c_i·dt, x + dt·Σ_j a_ij k_j)``, ``x' = x + dt·Σ b_i k_i``.

    Attributes:
      name: registry name.
      order: global order of accuracy (error ~ dt^order).
      a: lower-triangular stage coefficients; row ``i`` has ``i`` entries.
      b: output weights, one per stage.
      c: stage times as fractions of the step.
      interval: the closure predicts the average velocity over the step (MeanFlow): every stage gets the step's end
        ``r = t + dt`` as the keyword ``r``.
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    interval: bool = False

    @property
    def stages(self) -> int:
        """Velocity evaluations per step."""
        return len(self.b)

    def __post_init__(self):
        if not (len(self.a) == len(self.b) == len(self.c)) or any(len(r) != i for i, r in enumerate(self.a)):
            raise ValueError(f"solver {self.name!r}: inconsistent Butcher tableau")


EULER = Solver("euler", 1, ((),), (1.0,), (0.0,))
MIDPOINT = Solver("midpoint", 2, ((), (0.5,)), (0.0, 1.0), (0.0, 0.5))
HEUN = Solver("heun", 2, ((), (1.0,)), (0.5, 0.5), (0.0, 1.0))
RK4 = Solver(
    "rk4", 4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0)
)
MEANFLOW = Solver("meanflow", 1, ((),), (1.0,), (0.0,), interval=True)
"""One MeanFlow step per grid interval: ``x_r = x_t + (r − t)·u(x_t, r, t)`` (a student's average velocity)."""
SOLVERS: dict[str, Solver] = {s.name: s for s in (EULER, MIDPOINT, HEUN, RK4)}
"""The Runge-Kutta solvers (closures without ``r``)."""
ALL_SOLVERS: dict[str, Solver] = {**SOLVERS, MEANFLOW.name: MEANFLOW}


def get_solver(solver: str | Solver) -> Solver:
    """Looks a solver up by name (``euler``, ``midpoint``, ``heun``, ``rk4``, ``meanflow``) or passes a
    :class:`Solver` through."""
    if isinstance(solver, Solver):
        return solver
    if isinstance(solver, str) and solver.lower() in ALL_SOLVERS:
        return ALL_SOLVERS[solver.lower()]
    raise ValueError(f"solver: expected one of {sorted(ALL_SOLVERS)} or a Solver, got {solver!r}")


def _stage_inputs(solver: Solver, dt, x, ks, i):
    xi = x
    for j, aij in enumerate(solver.a[i]):
        if aij != 0.0:
            xi = xi + (dt * aij) * ks[j]
    return xi


def _combine(solver: Solver, dt, x, ks):
    incr = sum(bi * k for bi, k in zip(solver.b, ks) if bi != 0.0)
    return x + dt * incr


def _times(t, x):
    return jnp.full((x.shape[0],), t, dtype=jnp.result_type(t))


def _checked(v, x):
    """The velocity ``v`` after checking it has the state's shape (at trace time: free under jit)."""
    if isinstance(v, (tuple, list)):
        raise ValueError(f"velocity: expected an array of the state's shape {tuple(jnp.shape(x))}, got a "
                         f"{type(v).__name__} of {len(v)} (did it return a (v, aux) tuple?)")
    if jnp.shape(v) != jnp.shape(x):
        raise ValueError(f"velocity: expected an output of the state's shape {tuple(jnp.shape(x))}, got "
                         f"{tuple(jnp.shape(v))}")
    return v


def rk_step(solver: Solver, velocity: Callable, t, dt, x, cond):
    """One step of ``solver`` from time ``t`` (scalar) by ``dt``: returns x at ``t + dt``. ``x`` is ``[b, ...]``."""
    ks = []
    end = {"r": _times(t + dt, x)} if solver.interval else {}
    for i in range(solver.stages):
        xi = _stage_inputs(solver, dt, x, ks, i)
        ks.append(_checked(velocity(_times(t + solver.c[i] * dt, x), xi, cond, **end), x))
    return _combine(solver, dt, x, ks)


def rk_step_cached(solver: Solver, velocity: Callable, t, dt, x, cond, caches):
    """:func:`rk_step` for a streaming velocity ``velocity(t, x, cond, cache) -> (v, cache)``.

    ``caches`` is a pytree whose leaves have a leading ``[stages]`` axis: stage ``i`` of this step reads and
    writes slice ``i``, because each stage sees a different ``x``. Returns ``(x_next, new_caches)``.
    """
    ks, new = [], []
    end = {"r": _times(t + dt, x)} if solver.interval else {}
    for i in range(solver.stages):
        xi = _stage_inputs(solver, dt, x, ks, i)
        cache_i = jax.tree_util.tree_map(lambda c: c[i], caches)
        v, cache_i = velocity(_times(t + solver.c[i] * dt, x), xi, cond, cache_i, **end)
        ks.append(_checked(v, x))
        new.append(cache_i)
    stacked = jax.tree_util.tree_map(lambda *cs: jnp.stack(cs), *new)
    return _combine(solver, dt, x, ks), stacked


class SampleAux(NamedTuple):
    """Extras of :func:`sample`.

    Attributes:
      trajectory: ``[n, b, ...]`` the state after every step (None unless asked for).
      nfe: number of velocity evaluations (``n · stages``; a CFG pair counts once).
    """

    trajectory: Any
    nfe: int


def sample(
    velocity: Callable,
    x0: Float[Array, "b ..."],
    cond,
    grid,
    solver: str | Solver = "euler",
    *,
    return_trajectory: bool = False,
    check_inputs: bool = True,
) -> tuple[Float[Array, "b ..."], SampleAux]:
    """Integrates ``dx/dt = velocity(t, x, cond)`` from ``grid[0]`` to ``grid[-1]`` with a fixed-step solver.

    Args:
      velocity: ``velocity(t [b], x [b, ...], cond) -> [b, ...]``.
      x0: ``[b, ...]`` initial state (the noise sample at t = grid[0]).
      cond: any pytree passed through to ``velocity`` unchanged.
      grid: ``[n + 1]`` increasing times in [0, 1] (see :mod:`fmjax.timesteps`); a traced array is fine.
      solver: a name (``euler``, ``midpoint``, ``heun``, ``rk4``; ``meanflow`` for a MeanFlow student's closure
        ``velocity(t, x, cond, r=...)``) or a :class:`Solver`.
      return_trajectory: also return the state after every step.
      check_inputs: check ``x0`` and the floating leaves of ``cond`` for NaN/inf on the host (one reduction per
        array; skipped for tracers, i.e. when ``sample`` itself runs under jit). On by default; turn off only in a
        hot loop whose inputs are known to be finite.

    Raises:
      TypeError: ``x0`` is not floating (an integer state would be truncated at every step).
      ValueError: ``x0``/``cond`` hold NaN/inf (naming the argument or the leaf, e.g. ``cond.mu``); the velocity's
        output does not have the state's shape.

    Returns:
      ``(x1, SampleAux(trajectory, nfe))``.
    """
    solver = get_solver(solver)
    grid = validate_grid(grid)
    check_floating("x0", x0)
    if check_inputs:
        check_finite("x0", x0)
        check_tree_finite("cond", cond)
    x0 = jnp.asarray(x0)
    if x0.ndim < 1:
        raise ValueError(f"x0: expected an array with a leading batch axis, got shape {x0.shape}")
    dtype = jnp.result_type(x0.dtype, jnp.float32)
    grid = jnp.asarray(grid, dtype)
    n = grid.shape[0] - 1

    def body(x, t_dt):
        t, dt = t_dt
        x = rk_step(solver, velocity, t, dt, x, cond).astype(x0.dtype)
        return x, (x if return_trajectory else None)

    x1, traj = jax.lax.scan(body, x0, (grid[:-1], grid[1:] - grid[:-1]))
    return x1, SampleAux(traj, n * solver.stages)


def _pair(cond, null_cond):
    return jax.tree_util.tree_map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, null_cond(cond))


def classifier_free_guidance(
    velocity: Callable, weight: float, *, mode: str = "batch", null_cond: Callable = null_condition
) -> Callable:
    """Wraps a velocity closure with classifier-free guidance: ``v = (1 + w)·v(c) − w·v(∅)``.

    This is CosyVoice's form (``w = 0.7``); it equals ``v_c + w·(v_c − v_u)`` (F5-TTS uses ``w = 2``).

    Args:
      velocity: ``velocity(t [b], x [b, ...], cond) -> [b, ...]``.
      weight: guidance weight ``w`` (0 = plain conditional velocity).
      mode: ``"batch"`` runs one call on ``2b`` rows ``[cond; null]`` (CosyVoice's batch doubling);
        ``"two_calls"`` runs the conditional and unconditional rows separately. Both give the same result.
      null_cond: maps ``cond`` to its unconditional twin (default: ``cond.null()`` or zeros).
    """
    if mode not in ("batch", "two_calls"):
        raise ValueError(f"mode: expected 'batch' or 'two_calls', got {mode!r}")

    def guided(t, x, cond, **end):  # end: a MeanFlow step's r, passed through
        if mode == "batch":
            b = x.shape[0]
            end2 = {k: jnp.concatenate([e, e]) for k, e in end.items()}
            v = velocity(jnp.concatenate([t, t]), jnp.concatenate([x, x]), _pair(cond, null_cond), **end2)
            v_c, v_u = v[:b], v[b:]
        else:
            v_c, v_u = velocity(t, x, cond, **end), velocity(t, x, null_cond(cond), **end)
        return (1.0 + weight) * v_c - weight * v_u

    return guided


def classifier_free_guidance_cached(
    velocity: Callable, weight: float, *, null_cond: Callable = null_condition
) -> Callable:
    """:func:`classifier_free_guidance` (batch doubling) for a streaming velocity
    ``velocity(t, x, cond, cache) -> (v, cache)``; the cache holds ``2b`` rows ``[cond; null]``."""

    def guided(t, x, cond, cache, **end):
        b = x.shape[0]
        end2 = {k: jnp.concatenate([e, e]) for k, e in end.items()}
        v, cache = velocity(jnp.concatenate([t, t]), jnp.concatenate([x, x]), _pair(cond, null_cond), cache, **end2)
        return (1.0 + weight) * v[:b] - weight * v[b:], cache

    return guided


def count_nfe(grid_len: int, solver: str | Solver = "euler") -> int:
    """Velocity evaluations for a grid of ``grid_len`` points (``n = grid_len - 1`` steps)."""
    return (int(grid_len) - 1) * get_solver(solver).stages



@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How to sample a flow: the time grid, the number of steps, the solver and the CFG weight (hashable: a static
    argument of jitted pipelines and a field of experiment configs). The one place these four are declared.

    Attributes:
      grid: a grid name (``cosine``, ``linear``, ``sway``, see :func:`fmjax.timesteps.time_grid`) or a tuple of
        ``n_steps + 1`` increasing times from 0 to 1.
      n_steps: ODE steps ``n`` (ignored for an explicit grid, which fixes it).
      solver: ``euler``, ``midpoint``, ``heun``, ``rk4``, or ``meanflow`` (a MeanFlow student: one average-velocity
        step per grid interval, :data:`MEANFLOW`).
      cfg_weight: classifier-free guidance weight ``w`` (CosyVoice: 0.7; 0 = no unconditional pass).
    """

    grid: str | tuple = "cosine"
    n_steps: int = 10
    solver: str = "euler"
    cfg_weight: float = 0.7

    def __post_init__(self):
        if not isinstance(self.grid, str):
            try:
                object.__setattr__(self, "grid", tuple(float(g) for g in np.asarray(self.grid, np.float64).reshape(-1)))
            except (TypeError, ValueError):
                raise ValueError(f"grid: expected a grid name or a sequence of times, got {self.grid!r}") from None
        if not (isinstance(self.n_steps, int) and not isinstance(self.n_steps, bool) and self.n_steps >= 1):
            raise ValueError(f"n_steps: expected an int >= 1, got {self.n_steps!r}")
        get_solver(self.solver)
        w = self.cfg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not np.isfinite(w) \
                or w < 0:
            raise ValueError(f"cfg_weight: expected a finite guidance weight >= 0, got {w!r}")
        object.__setattr__(self, "cfg_weight", float(w))
        try:
            grid = self.time_grid()
        except (ValueError, TypeError) as e:
            raise ValueError(f"grid: {e}") from None
        if not isinstance(self.grid, str):
            object.__setattr__(self, "n_steps", len(grid) - 1)

    def time_grid(self) -> np.ndarray:
        """The ``[n + 1]`` float32 times (data: a jitted sampler reuses its compilation for new values)."""
        from fmjax.timesteps import time_grid

        if isinstance(self.grid, str):
            return np.asarray(time_grid(self.grid, self.n_steps), np.float32)
        return np.asarray(time_grid(np.asarray(self.grid, np.float32)), np.float32)

    @property
    def nfe(self) -> int:
        """Velocity evaluations per sample (a CFG pair counts once)."""
        return self.n_steps * get_solver(self.solver).stages

    def guided(self, velocity: Callable, *, cached: bool = False) -> Callable:
        """``velocity`` with this config's classifier-free guidance (unchanged for ``cfg_weight == 0``); ``cached``
        for a streaming velocity ``velocity(t, x, cond, cache) -> (v, cache)``."""
        if self.cfg_weight == 0.0:
            return velocity
        if cached:
            return classifier_free_guidance_cached(velocity, self.cfg_weight)
        return classifier_free_guidance(velocity, self.cfg_weight)
