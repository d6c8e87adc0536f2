"""MeanFlow (Geng et al., "Mean Flows for One-step Generative Modeling", 2025) in fmjax's time convention.

**Convention.** ``t = 0`` is noise, ``t = 1`` is data; the path is ``x_t = (1 − (1 − σ)·t)·z + t·x1`` with the
conditional velocity ``v = x1 − (1 − σ)·z`` (:class:`fmjax.paths.CondOTPath`). A MeanFlow network ``u(z, r, t)``
predicts the **average velocity** over the interval ``[t, r]``, ``r ≥ t`` (forward, towards the data)::

    u(z_t, r, t) = 1/(r − t) · ∫_t^r v(z_τ, τ) dτ,            u(z, t, t) = v(z, t)

**The identity.** Differentiating ``(r − t)·u(z_t, r, t) = ∫_t^r v(z_τ, τ) dτ`` in ``t`` (``r`` held fixed, ``z_t``
moving along the flow) gives ``−u + (r − t)·du/dt = −v``, i.e.::

    u(z_t, r, t) = v(z_t, t) − (t − r) · d/dt u(z_t, r, t),     d/dt u = v·∂_z u + 0·∂_r u + ∂_t u

which is the paper's ``u = v − (t − r)·du/dt`` with the signs unchanged: the paper runs from noise at 1 to data at
0 with ``r ≤ t``; its times are ``1 − τ`` of ours and its ``v``, ``u`` are minus ours, and both substitutions cancel.
Here ``t − r ≤ 0``. The total derivative is one forward-mode product, ``jax.jvp(u, (z, r, t), (v, 0, 1))``
(:func:`mean_flow_target`). Sampling steps forward: ``z_r = z_t + (r − t)·u(z_t, r, t)``; one step from noise to
data is ``x = z + u(z, 1, 0)`` (the solver ``"meanflow"`` of :mod:`fmjax.samplers` on any grid).

**Training** (:class:`MeanFlowLoss`). Draw ``(t, r)`` (:class:`IntervalSampler`: two logit-normal times, ``t`` the
smaller, and ``r = t`` for all but a fraction ``neq_ratio``), noise, prompt and CFG dropout as the CFM loss
does; regress ``u_θ(z_t, r, t)`` on the stop-gradient target ``sg(ṽ − (t − r)·du_θ/dt)``. At ``r = t`` the target is
``ṽ``, and with no guidance (``ω = 1, κ = 0``) and no adaptive weight (``p = 0``) the loss *is* the CFM loss.

**Classifier-free guidance folded into training** (the paper's §4.2 / appendix B.1). For rows that keep their
condition the instantaneous field is replaced by::

    ṽ = ω·v + κ·u_θ(z_t, t, t | c) + (1 − ω − κ)·u_θ(z_t, t, t | ∅)       (no gradient through the u_θ terms)

and rows whose condition was dropped (``cfg_rate``) keep ``ṽ = v``. At the fixed point the student's ``u`` averages
the guided field ``ω'·v_c + (1 − ω')·v_u`` with ``ω' = ω / (1 − κ)``, i.e. CosyVoice's CFG weight ``w = ω' − 1``
(:meth:`MeanFlowLoss.guidance_weight`). The student then samples **without** CFG; asking CFG of it is an error.

**Adaptive weighting.** Per example ``e_b`` = the mean squared error over its valid elements, weight
``sg((e_b + c)^−p)``; ``loss = Σ_b w_b·Σ(err²) / Σ_b (valid elements)`` (``p = 0``: the CFM normalisation; ``p = 1``:
the paper's choice, the gradient of ``log(e + c)``).

**Students of token-to-mel flows.** A student's estimator config has ``mean_flow=True``: a second time embedding of
``r − t`` (``cond.r`` of :class:`fmjax.cond.MelCond`), zero-initialised, so :func:`student_params` of a teacher's
parameters is exactly the teacher (at every ``r``). :func:`check_sampler` is the one rule for sampling a flow:
a CFG weight > 0 for a student, or the ``meanflow`` solver for a plain flow, is a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.checks import check_finite, check_in_range
from fmjax.cond import null_condition
from fmjax.loss import CFMLoss, LossDraws, _with_prompt, prompt_prefix
from fmjax.paths import CondOTPath
from fmjax.timesteps import LogitNormal, TSampler, Uniform
from fmjax.typing import Array, Float, Key

__all__ = ["IntervalSampler", "MeanFlowDraws", "MeanFlowLoss", "mean_flow_target", "is_student", "student_config",
           "student_params", "check_sampler", "STUDENT_SAMPLER"]


# ------------------------------------------------------------------------------------------------ (t, r) draws
@dataclasses.dataclass(frozen=True)
class IntervalSampler:
    """The ``(t, r)`` sampler of MeanFlow training: two draws of ``t_sampler``, ``t`` the smaller, ``r`` the larger;
    then ``r = t`` for every row but a fraction ``neq_ratio`` (the paper's best: 25 % with ``r ≠ t``).

    The default ``LogitNormal(m=0.4, s=1)`` is the paper's ``lognorm(−0.4, 1.0)`` mirrored into our direction (its
    times are ``1 − τ`` of ours).
    """

    t_sampler: TSampler = LogitNormal(0.4, 1.0)
    neq_ratio: float = 0.25

    def __post_init__(self):
        if not isinstance(self.t_sampler, TSampler):
            raise TypeError(f"t_sampler: expected a fmjax.timesteps.TSampler, got {type(self.t_sampler).__name__}")
        if isinstance(self.neq_ratio, bool) or not (0.0 <= float(self.neq_ratio) <= 1.0):
            raise ValueError(f"neq_ratio: expected a fraction in [0, 1], got {self.neq_ratio!r}")

    def __call__(self, key: Key, batch: int, dtype=jnp.float32) -> tuple[Float[Array, "b"], Float[Array, "b"]]:
        """``(t [b], r [b])`` with ``0 <= t <= r <= 1``."""
        k_a, k_b, k_eq = jax.random.split(key, 3)
        a, b = self.t_sampler(k_a, batch, dtype), self.t_sampler(k_b, batch, dtype)
        t, r = jnp.minimum(a, b), jnp.maximum(a, b)
        equal = jax.random.uniform(k_eq, (batch,)) >= self.neq_ratio
        return t, jnp.where(equal, t, r)


class MeanFlowDraws(NamedTuple):
    """The random numbers of one :class:`MeanFlowLoss` evaluation; any field may be given to inject it.

    Attributes:
      t, r: ``[b]`` interval start and end (``r >= t``); z: ``[b, ...]`` noise; keep: ``[b]`` bool (False = the
      condition is dropped); prompt_len: ``[b]`` int32 prompt-prefix frames.
    """

    t: Any = None
    r: Any = None
    z: Any = None
    keep: Any = None
    prompt_len: Any = None


# ------------------------------------------------------------------------------------------------- the target
def _per_row(a, like):
    return jnp.reshape(a, (-1,) + (1,) * (jnp.ndim(like) - 1))


def mean_flow_target(velocity: Callable, x_t, cond, t: Float[Array, "b"], r: Float[Array, "b"], v):
    """``(u, target)``: the network's average velocity ``u = velocity(t, x_t, cond, r=r)`` and the MeanFlow target
    ``sg(v − (t − r)·du/dt)``, the total derivative by ``jax.jvp`` with tangents ``(v, 0, 1)`` for ``(x_t, r, t)``.

    Args:
      velocity: ``velocity(t [b], x [b, ...], cond, r=[b]) -> u [b, ...]`` (the network, called once, on the batch).
      x_t: ``[b, ...]`` points on the path; v: ``[b, ...]`` the (guided) instantaneous velocity there.
      t, r: ``[b]`` interval start and end.
    """
    u, dudt = jax.jvp(lambda x, r_, t_: velocity(t_, x, cond, r=r_), (x_t, r, t),
                      (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return u, jax.lax.stop_gradient(v - _per_row(t - r, v) * dudt)


# --------------------------------------------------------------------------------------------------- the loss
@dataclasses.dataclass(frozen=True)
class MeanFlowLoss:
    """The MeanFlow loss (hashable config; call it to evaluate). See the module docstring for the maths.

    Attributes:
      path: the probability path (the teacher's: CosyVoice ``CondOTPath(1e-6)``).
      intervals: the ``(t, r)`` sampler.
      cfg_rate: probability of dropping a row's conditions (trains the unconditional ``u_θ(· | ∅)`` guidance needs).
      prompt_prob, prompt_max_frac: the prompt prefix, as :class:`fmjax.loss.CFMLoss`.
      cfg_scale: ``ω`` of the guided field (1 = no guidance).
      cfg_mix: ``κ``, the share of the network's own conditional velocity in the guided field (0 <= κ < 1).
      adaptive_p, adaptive_c: the adaptive weight ``(e + c)^−p`` (``p = 0``: plain squared error).
    """

    path: CondOTPath = CondOTPath(1e-6)
    intervals: IntervalSampler = IntervalSampler()
    cfg_rate: float = 0.0
    prompt_prob: float = 0.0
    prompt_max_frac: float = 0.3
    cfg_scale: float = 1.0
    cfg_mix: float = 0.0
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3

    def __post_init__(self):
        if not isinstance(self.intervals, IntervalSampler):
            raise TypeError(f"intervals: expected an IntervalSampler, got {type(self.intervals).__name__}")
        self._cfm()  # validates cfg_rate, prompt_prob, prompt_max_frac
        for name, ok, what in (("cfg_scale", self.cfg_scale >= 0, ">= 0"), ("cfg_mix", 0 <= self.cfg_mix < 1,
                               "in [0, 1)"), ("adaptive_p", self.adaptive_p >= 0, ">= 0"),
                               ("adaptive_c", self.adaptive_c > 0, "> 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or not ok:
                raise ValueError(f"{name}: expected a finite number {what}, got {value!r}")
        if self.guided and self.cfg_rate == 0:
            raise ValueError(f"cfg_rate: guidance folded into training (cfg_scale={self.cfg_scale}, "
                             f"cfg_mix={self.cfg_mix}) needs the unconditional velocity; expected cfg_rate > 0, got 0")

    @property
    def guided(self) -> bool:
        """Whether the target uses the guided field (``ω ≠ 1`` or ``κ ≠ 0``)."""
        return self.cfg_scale != 1.0 or self.cfg_mix != 0.0

    def guidance_weight(self) -> float:
        """CosyVoice's CFG weight ``w = ω / (1 − κ) − 1`` that the trained student has folded in."""
        return self.cfg_scale / (1.0 - self.cfg_mix) - 1.0

    def _cfm(self) -> CFMLoss:
        return CFMLoss(path=self.path, t_sampler=Uniform(), cfg_rate=self.cfg_rate, prompt_prob=self.prompt_prob,
                       prompt_max_frac=self.prompt_max_frac)

    def draw(self, key: Key, x1, mask) -> MeanFlowDraws:
        """Draws ``t, r`` (:attr:`intervals`) and ``z``, ``keep``, ``prompt_len`` (as the CFM loss)."""
        k_cfm, k_int = jax.random.split(key)
        d = self._cfm().draw(k_cfm, x1, mask)
        t, r = self.intervals(k_int, x1.shape[0], jnp.result_type(x1.dtype, jnp.float32))
        return MeanFlowDraws(t, r, d.z, d.keep, d.prompt_len)

    def __call__(self, velocity: Callable, x1: Float[Array, "b ... m"], mask=None, cond=None, key: Key | None = None,
                 *, draws: MeanFlowDraws | None = None, null_cond: Callable = null_condition,
                 check_inputs: bool = True) -> tuple[Float[Array, ""], dict]:
        """Evaluates the loss.

        Args:
          velocity: the student as ``velocity(t [b], x [b, ...], cond, r=[b]) -> u [b, ...]``
            (:func:`fmjax.pipelines.common.flow_velocity` of a student, or :func:`fmjax.toy.toy_velocity`).
          x1: ``[b, ..., m]`` data; mask: ``[b, ...]`` = ``x1.shape[:-1]`` (1 = valid; default all).
          cond: conditions (batch-first pytree, e.g. :class:`fmjax.cond.MelCond`) or None.
          key: PRNG key for the draws not injected; draws: :class:`MeanFlowDraws` to inject.
          null_cond: the unconditional twin of a condition; check_inputs: host-side NaN/inf and range checks.

        Raises:
          ValueError/TypeError naming the argument: as :class:`fmjax.loss.CFMLoss`, plus ``draws.r`` outside
          [0, 1] or earlier than ``t`` (``r >= t``: the interval runs forward, towards the data).

        Returns:
          ``(loss, aux)``: aux ``per_example [b]`` (the unweighted mean squared error), ``weight [b]`` (the adaptive
          weights), ``t``, ``r``, ``keep``, ``prompt_len``, ``x_t``, ``u``, ``target``.
        """
        if draws is not None and not isinstance(draws, MeanFlowDraws):
            raise TypeError(f"draws: expected a MeanFlowDraws, got {type(draws).__name__}")
        draws = draws or MeanFlowDraws()
        cfm = self._cfm()
        as_cfm = LossDraws(draws.t, draws.z, draws.keep, draws.prompt_len)
        x1, mask = cfm._check(x1, mask, cond, key, as_cfm, check_inputs)
        b, m = x1.shape[0], x1.shape[-1]
        if key is None and draws.r is None:
            raise ValueError("key: a PRNG key is needed to draw ['r'] (or pass it in `draws`)")
        if draws.r is not None:
            _check_r(draws.r, draws.t, b, check_inputs)
        if key is not None:
            drawn = self.draw(key, x1, mask)
        else:
            drawn = MeanFlowDraws(keep=jnp.ones((b,), bool), prompt_len=jnp.zeros((b,), jnp.int32))
        d = MeanFlowDraws(*[given if given is not None else new for given, new in zip(draws, drawn)])
        dtype = jnp.result_type(x1.dtype, jnp.float32)
        t, r = jnp.asarray(d.t, dtype).reshape(b), jnp.asarray(d.r, dtype).reshape(b)
        keep = jnp.asarray(d.keep).astype(bool).reshape(b)
        prompt_len = jnp.asarray(d.prompt_len, jnp.int32).reshape(b)
        use_prompt = self.prompt_prob > 0 or draws.prompt_len is not None

        def prepare(x1_i, z_i, t_i, keep_i, plen_i, cond_i):
            x_t, v = self.path.interpolate(z_i, x1_i, t_i), self.path.velocity(z_i, x1_i, t_i)
            if cond_i is not None:
                if use_prompt:
                    cond_i = _with_prompt(cond_i, prompt_prefix(x1_i, plen_i))
                cond_i = jax.tree_util.tree_map(lambda c, n: jnp.where(keep_i, c, n), cond_i, null_cond(cond_i))
            return x_t, v, cond_i

        x_t, v, cond_used = jax.vmap(prepare)(x1, jnp.asarray(d.z, x1.dtype), t, keep, prompt_len, cond)
        if self.guided:  # ṽ = ω·v + κ·u(z, t, t | c) + (1 − ω − κ)·u(z, t, t | ∅) on the rows that kept c
            pair = jax.tree_util.tree_map(lambda c, n: jnp.concatenate([c, n]), cond_used, null_cond(cond_used))
            tt = jnp.concatenate([t, t])
            both = jax.lax.stop_gradient(velocity(tt, jnp.concatenate([x_t, x_t]), pair, r=tt))
            u_c, u_u = both[:b], both[b:]
            guided = self.cfg_scale * v + self.cfg_mix * u_c + (1.0 - self.cfg_scale - self.cfg_mix) * u_u
            v = jnp.where(_per_row(keep, v), guided.astype(v.dtype), v)
        u, target = mean_flow_target(velocity, x_t, cond_used, t, r, v)
        if isinstance(u, (tuple, list)) or jnp.shape(u) != x1.shape:
            raise ValueError(f"velocity: expected an output of shape {x1.shape}, got "
                             f"{type(u).__name__ if isinstance(u, (tuple, list)) else jnp.shape(u)}")

        def reduce(u_i, tgt_i, mask_i):
            err = (u_i - tgt_i) * mask_i[..., None]
            return jnp.sum(err**2), jnp.sum(mask_i) * m

        num, den = jax.vmap(reduce)(u.astype(jnp.float32), target.astype(jnp.float32), mask.astype(jnp.float32))
        per_example = jnp.where(den > 0, num / jnp.maximum(den, 1e-12), 0.0)
        weight = jax.lax.stop_gradient((per_example + self.adaptive_c) ** (-self.adaptive_p))
        loss = jnp.sum(weight * num) / jnp.maximum(jnp.sum(den), 1e-12)
        aux = dict(per_example=per_example, weight=weight, t=t, r=r, keep=keep, prompt_len=prompt_len, x_t=x_t, u=u,
                   target=target)
        return loss, aux


def _check_r(r, t, b: int, check_inputs: bool) -> None:
    if int(np.size(r)) != b:
        raise ValueError(f"draws.r: expected {b} values (one per example), got shape {np.shape(r)}")
    if not check_inputs or isinstance(r, jax.core.Tracer):
        return
    check_finite("draws.r", r)
    check_in_range("draws.r", r, 0.0, 1.0)
    if t is not None and not isinstance(t, jax.core.Tracer):
        rn, tn = np.asarray(r, np.float64).reshape(b), np.asarray(t, np.float64).reshape(b)
        bad = np.flatnonzero(rn < tn)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"draws.r: expected interval ends r >= t (t = 0 noise -> 1 data: the average velocity "
                             f"over [t, r]), got r < t at rows {bad.tolist()} (row {i}: r = {rn[i]:.6g}, "
                             f"t = {tn[i]:.6g})")


# ------------------------------------------------------------------------------------------ token-to-mel students
STUDENT_SAMPLER_FIELDS = dict(grid="linear", n_steps=2, solver="meanflow", cfg_weight=0.0)
"""A student's default sampler: two MeanFlow steps on the linear grid, no CFG."""


def __getattr__(name):  # STUDENT_SAMPLER without importing the samplers at module import (no cycle)
    if name == "STUDENT_SAMPLER":
        from fmjax.samplers import SamplerConfig

        return SamplerConfig(**STUDENT_SAMPLER_FIELDS)
    raise AttributeError(f"module 'fmjax.meanflow' has no attribute {name!r}")


def is_student(model) -> bool:
    """Whether a flow (or estimator) is a MeanFlow student: its estimator config has ``mean_flow=True``."""
    cfg = getattr(model, "config", None)
    est = getattr(cfg, "estimator", cfg)
    return bool(getattr(est, "mean_flow", False))


def student_config(config, what: str = "config"):
    """A flow config (``Token2MelConfig``, ``CosyVoice3FlowConfig``) with ``estimator.mean_flow=True``: the
    teacher's architecture plus the second time embedding; everything else (the source ``source_mu`` /
    ``source_std``, ``speaker_shift``) is the teacher's, so the student samples from the teacher's source. ``what``
    names the config in errors."""
    est = getattr(config, "estimator", None)
    if est is None or not hasattr(est, "mean_flow"):
        raise TypeError(f"{what}: expected a flow config with a mean_flow-capable estimator, got "
                        f"{type(config).__name__}")
    return dataclasses.replace(config, estimator=dataclasses.replace(est, mean_flow=True))


def student_params(student, teacher_params, key: Key):
    """The student's parameters initialised from a teacher's: every teacher leaf copied, the second time embedding
    fresh (its output layer zero), so the student computes exactly the teacher's velocity at every ``r``.

    Raises ``ValueError`` unless the teacher's tree is the student's without the second embedding (same shapes).
    """
    from fmjax.checkpoint import compare_leaves, leaf_table
    from fmjax.models.flow import init_flow_params

    if not is_student(student):
        raise TypeError(f"student: expected a flow whose estimator config has mean_flow=True (student_config), got "
                        f"{type(student).__name__} with mean_flow=False")
    shapes = jax.eval_shape(lambda k: init_flow_params(student, k), key)  # no compilation
    new = {k: v for k, v in leaf_table(shapes).items() if _is_second_embedding(k)}
    expected = {k: v for k, v in leaf_table(shapes).items() if k not in new}
    diff = compare_leaves(expected, leaf_table(teacher_params), dtypes=False)
    if diff:
        raise ValueError("teacher_params: expected the student's tree without its second time embedding:\n  "
                         + "\n  ".join(diff))
    keys = iter(jax.random.split(key, max(len(new), 1)))

    def fresh(path, leaf):  # flax's Dense defaults (lecun-normal kernel, zero bias); linear_2 is zero (zero_out)
        if "linear_1" in path and path[-1] == "kernel":
            return jax.nn.initializers.lecun_normal()(next(keys), leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    def merge(student_tree, teacher_tree, path=()):
        if isinstance(student_tree, dict):
            return {k: merge(v, teacher_tree.get(k, {}) if isinstance(teacher_tree, dict) else {}, path + (k,))
                    for k, v in student_tree.items()}
        if any(_is_second_embedding(p) for p in path):
            return fresh(path, student_tree)
        return jnp.asarray(teacher_tree, student_tree.dtype)

    return merge(shapes, teacher_params)


def _is_second_embedding(name: str) -> bool:
    return "time_mlp_r" in name or "time_embed_r" in name


def check_sampler(model, sampler, *, cfg_name: str = "cfg_weight", solver_name: str = "solver") -> None:
    """The rule for sampling ``model`` with ``sampler`` (a :class:`fmjax.samplers.SamplerConfig`): a MeanFlow student
    has its guidance folded in (no CFG at inference); the ``meanflow`` solver needs a student. ``cfg_name`` /
    ``solver_name`` name the arguments in the errors."""
    from fmjax.samplers import get_solver

    if is_student(model) and sampler.cfg_weight != 0.0:
        raise ValueError(f"{cfg_name}: the model is a MeanFlow student with classifier-free guidance folded into its "
                         f"training (fmjax.meanflow), so it samples without CFG; expected 0, got {sampler.cfg_weight}")
    if get_solver(sampler.solver).interval and not is_student(model):
        raise ValueError(f"{solver_name}: {sampler.solver!r} steps a MeanFlow student's average velocity, but the "
                         f"model is a plain flow (estimator config mean_flow=False); use euler/midpoint/heun/rk4")
