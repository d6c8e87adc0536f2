"""The conditional flow-matching (CFM) training loss, written per example and ``vmap``-ped over the batch.

For each example: draw ``t`` and noise ``z``, build ``x_t`` and the target ``u_t`` on the path, optionally
replace the prompt condition by a prefix of the example's own data (CosyVoice's prompt conditioning), and
drop its conditions with probability ``cfg_rate`` (classifier-free-guidance training). The estimator then
runs **once on the whole batch**, and the masked squared error is reduced per example:

    loss = Σ_b Σ((v − u)·mask)² / Σ_b (Σ mask · m)           (CosyVoice/Matcha normalisation)

Padded frames never reach the loss or its gradient (they are multiplied by 0 before squaring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.checks import check_finite, check_floating, check_in_range, check_tree_finite
from fmjax.cond import null_condition
from fmjax.paths import CondOTPath
from fmjax.timesteps import TSampler, Uniform
from fmjax.typing import Array, Float, Key

__all__ = ["LossDraws", "CFMLoss", "prompt_prefix", "per_t_bin"]


class LossDraws(NamedTuple):
    """The random numbers one loss evaluation consumes; any field may be given to inject it (for parity).

    Attributes:
      t: ``[b]`` flow times.
      z: ``[b, ...]`` noise, shaped like ``x1``.
      keep: ``[b]`` bool, False where the conditions are dropped (CFG training).
      prompt_len: ``[b]`` int32, frames of ``x1`` copied into the prompt condition (0 = none).
    """

    t: Any = None
    z: Any = None
    keep: Any = None
    prompt_len: Any = None


def prompt_prefix(x1: Float[Array, "t m"], prompt_len) -> Float[Array, "t m"]:
    """One example's prompt condition: ``x1`` in the first ``prompt_len`` frames, zeros after."""
    keep = jnp.arange(x1.shape[0]) < prompt_len  # [t]
    return jnp.where(keep[:, None], x1, jnp.zeros_like(x1))


def _with_prompt(cond, prompt):
    if hasattr(cond, "_replace"):
        return cond._replace(prompt=prompt)
    return {**cond, "prompt": prompt}


def _has_prompt(cond) -> bool:
    return (hasattr(cond, "_fields") and "prompt" in cond._fields) or (isinstance(cond, dict) and "prompt" in cond)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


@dataclasses.dataclass(frozen=True)
class CFMLoss:
    """Conditional flow-matching loss (hashable config; call it to evaluate).

    Attributes:
      path: the probability path (CosyVoice: ``CondOTPath(1e-6)``; Matcha ``1e-4``; rectified ``0``).
      t_sampler: training time sampler (see :mod:`fmjax.timesteps`).
      cfg_rate: probability of dropping an example's conditions (CosyVoice: 0.2). x and mask are never dropped.
      prompt_prob: probability that an example gets a prompt prefix (CosyVoice: 0.5).
      prompt_max_frac: the prefix length is uniform in ``[0, floor(prompt_max_frac · length)]`` (CosyVoice: 0.3).
    """

    path: CondOTPath = CondOTPath(1e-6)
    t_sampler: TSampler = Uniform()
    cfg_rate: float = 0.0
    prompt_prob: float = 0.0
    prompt_max_frac: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.cfg_rate < 1.0:
            raise ValueError(f"cfg_rate: expected a probability in [0, 1), got {self.cfg_rate!r}")
        if not 0.0 <= self.prompt_prob <= 1.0:
            raise ValueError(f"prompt_prob: expected a probability in [0, 1], got {self.prompt_prob!r}")
        if not 0.0 <= self.prompt_max_frac < 1.0:
            raise ValueError(f"prompt_max_frac: expected a fraction in [0, 1), got {self.prompt_max_frac!r}")
        if not isinstance(self.t_sampler, TSampler):
            raise TypeError(f"t_sampler: expected a fmjax.timesteps.TSampler, got {type(self.t_sampler).__name__}")

    # ------------------------------------------------------------------------------------------------ draws
    def draw(self, key: Key, x1, mask) -> LossDraws:
        """Draws ``t``, ``z``, the CFG keep flags and the prompt lengths for a batch."""
        b = x1.shape[0]
        k_t, k_z, k_cfg, k_use, k_len = jax.random.split(key, 5)
        t = self.t_sampler(k_t, b, jnp.result_type(x1.dtype, jnp.float32))
        z = jax.random.normal(k_z, x1.shape, x1.dtype)
        keep = jax.random.uniform(k_cfg, (b,)) >= self.cfg_rate
        prompt_len = jnp.zeros((b,), jnp.int32)
        if self.prompt_prob > 0:
            lengths = jnp.sum(mask.reshape(b, -1), axis=1)
            hi = jnp.floor(lengths.astype(jnp.float32) * self.prompt_max_frac).astype(jnp.int32)
            k = jax.random.randint(k_len, (b,), 0, hi + 1)
            use = jax.random.uniform(k_use, (b,)) < self.prompt_prob
            prompt_len = jnp.where(use, k, 0).astype(jnp.int32)
        return LossDraws(t, z, keep, prompt_len)

    # ------------------------------------------------------------------------------------------------- call
    def __call__(
        self,
        velocity: Callable,
        x1: Float[Array, "b ... m"],
        mask=None,
        cond=None,
        key: Key | None = None,
        *,
        draws: LossDraws | None = None,
        null_cond: Callable = null_condition,
        check_inputs: bool = True,
    ) -> tuple[Float[Array, ""], dict]:
        """Evaluates the loss.

        Args:
          velocity: the estimator as a closure ``velocity(t [b], x_t [b, ...], cond) -> [b, ...]``; called once.
          x1: ``[b, ..., m]`` data (mel ``[b, t, m]``, or toy points ``[b, 2]``).
          mask: ``[b, ...]`` = ``x1.shape[:-1]``, 1 at valid frames (default: all valid).
          cond: conditions, any pytree with batch-leading leaves (e.g. :class:`fmjax.cond.MelCond`), or None.
            With ``prompt_prob > 0`` it must have a ``prompt`` field, which the loss overwrites.
          key: PRNG key for the draws (may be None only if ``draws`` supplies every field).
          draws: inject some or all random numbers (:class:`LossDraws`); the rest are drawn from ``key``.
          null_cond: unconditional twin of a condition (default ``cond.null()`` or zeros).
          check_inputs: check ``x1``, ``cond`` and injected draws for NaN/inf (and ``draws.t`` within [0, 1]) on
            the host, one reduction per array. Skipped for tracers: inside a jitted train step the loss is traced
            and only the static (shape/dtype) checks run -- check the batch before (the trainer does). On by
            default; masks are always checked for 0/1 values when concrete.

        Raises:
          TypeError: ``x1`` (or ``draws.z``) is not floating; ``draws`` is not a LossDraws.
          ValueError: naming the argument: wrong shapes, non-0/1 or empty masks, NaN/inf values, flow times outside
            [0, 1], a velocity output of the wrong shape.

        Returns:
          ``(loss, aux)`` with aux ``per_example [b]``, ``t [b]``, ``keep [b]``, ``prompt_len [b]`` and the
          estimator inputs ``x_t``, ``target``, ``cond`` (dropped by XLA when unused under jit).
        """
        x1, mask = self._check(x1, mask, cond, key, draws, check_inputs)
        b, m = x1.shape[0], x1.shape[-1]
        draws = draws or LossDraws()
        if key is not None:
            drawn = self.draw(key, x1, mask)
        else:  # deterministic defaults where the config draws nothing; _check made sure the rest is given
            drawn = LossDraws(keep=jnp.ones((b,), bool), prompt_len=jnp.zeros((b,), jnp.int32))
        d = LossDraws(*[given if given is not None else new for given, new in zip(draws, drawn)])
        t = jnp.asarray(d.t, jnp.result_type(x1.dtype, jnp.float32)).reshape(b)
        keep = jnp.asarray(d.keep).astype(bool).reshape(b)
        prompt_len = jnp.asarray(d.prompt_len, jnp.int32).reshape(b)
        use_prompt = self.prompt_prob > 0 or draws.prompt_len is not None

        def prepare(x1_i, z_i, t_i, keep_i, plen_i, cond_i):
            x_t = self.path.interpolate(z_i, x1_i, t_i)
            u = self.path.velocity(z_i, x1_i, t_i)
            if cond_i is not None:
                if use_prompt:
                    cond_i = _with_prompt(cond_i, prompt_prefix(x1_i, plen_i))
                dropped = null_cond(cond_i)
                cond_i = jax.tree_util.tree_map(lambda c, n: jnp.where(keep_i, c, n), cond_i, dropped)
            return x_t, u, cond_i

        x_t, u, cond_used = jax.vmap(prepare)(x1, jnp.asarray(d.z, x1.dtype), t, keep, prompt_len, cond)
        v = velocity(t, x_t, cond_used)  # the whole batch at once
        if isinstance(v, (tuple, list)):
            raise ValueError(f"velocity: expected an output of shape {x1.shape}, got a {type(v).__name__} "
                             "(did it return a (v, aux) tuple?)")
        if v.shape != x1.shape:
            raise ValueError(f"velocity: expected an output of shape {x1.shape}, got {v.shape}")

        def reduce(v_i, u_i, mask_i):
            err = (v_i - u_i) * mask_i[..., None]
            return jnp.sum(err**2), jnp.sum(mask_i) * m

        num, den = jax.vmap(reduce)(v.astype(jnp.float32), u.astype(jnp.float32), mask.astype(jnp.float32))
        loss = jnp.sum(num) / jnp.maximum(jnp.sum(den), 1e-12)
        per_example = jnp.where(den > 0, num / jnp.maximum(den, 1e-12), 0.0)
        aux = dict(per_example=per_example, t=t, keep=keep, prompt_len=prompt_len, x_t=x_t, target=u, cond=cond_used)
        return loss, aux

    # ------------------------------------------------------------------------------------------- validation
    def _check(self, x1, mask, cond, key, draws, check_inputs=True):
        if draws is not None and not isinstance(draws, LossDraws):
            raise TypeError(f"draws: expected a LossDraws, got {type(draws).__name__}")
        check_floating("x1", x1)
        if check_inputs:
            check_finite("x1", x1)
            check_tree_finite("cond", cond)
        x1 = jnp.asarray(x1)
        if x1.ndim < 2:
            raise ValueError(f"x1: expected [b, ..., m] with a batch and a feature axis, got shape {x1.shape}")
        b = x1.shape[0]
        if mask is None:
            mask = jnp.ones(x1.shape[:-1], jnp.float32)
        mask = jnp.asarray(mask)
        if mask.shape != x1.shape[:-1]:
            raise ValueError(f"mask: expected shape {x1.shape[:-1]} (x1 without its feature axis), got {mask.shape}")
        if _is_concrete(mask):
            mnp = np.asarray(mask, np.float64)
            if not np.all((mnp == 0) | (mnp == 1)):
                raise ValueError("mask: expected only 0/1 values (1 = valid frame)")
            if mnp.reshape(b, -1).sum(axis=1).min() == 0:
                raise ValueError("mask: an example has no valid frame (empty utterance)")
        if cond is not None:
            for leaf in jax.tree_util.tree_leaves(cond):
                if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != b:
                    raise ValueError(f"cond: every leaf needs the batch axis first (b={b}), got shape {jnp.shape(leaf)}")
        needs_prompt = self.prompt_prob > 0 or (draws is not None and draws.prompt_len is not None)
        if needs_prompt:
            if x1.ndim != 3:
                raise ValueError(f"x1: prompt conditioning needs a [b, t, m] sequence, got shape {x1.shape}")
            if cond is None or not _has_prompt(cond):
                raise ValueError("cond: prompt conditioning needs a condition with a `prompt` field (e.g. MelCond)")
        if draws is not None:
            if not isinstance(draws, LossDraws):
                raise TypeError(f"draws: expected a LossDraws, got {type(draws).__name__}")
            if draws.z is not None and tuple(np.shape(draws.z)) != x1.shape:
                raise ValueError(f"draws.z: expected shape {x1.shape}, got {np.shape(draws.z)}")
            if draws.z is not None:
                check_floating("draws.z", draws.z)
            if check_inputs:
                check_finite("draws.z", draws.z)
                check_in_range("draws.t", draws.t, 0.0, 1.0)
            if draws.prompt_len is not None and not jnp.issubdtype(jnp.result_type(draws.prompt_len), jnp.integer):
                raise TypeError(f"draws.prompt_len: expected integer frame counts, got dtype "
                                f"{jnp.result_type(draws.prompt_len)}")
            for name in ("t", "keep", "prompt_len"):
                val = getattr(draws, name)
                if val is not None and int(np.size(val)) != b:
                    raise ValueError(f"draws.{name}: expected {b} values (one per example), got shape {np.shape(val)}")
        if key is None:
            given = draws or LossDraws()
            need = ["t", "z"] + (["keep"] if self.cfg_rate > 0 else []) + (["prompt_len"] if self.prompt_prob > 0 else [])
            missing = [n for n in need if getattr(given, n) is None]
            if missing:
                raise ValueError(f"key: a PRNG key is needed to draw {missing} (or pass them in `draws`)")
        return x1, mask


def per_t_bin(t: Float[Array, "b"], values: Float[Array, "b"], n_bins: int = 10):
    """Sums and counts of ``values`` in ``n_bins`` equal bins of ``t`` (for per-t loss curves).

    Returns ``(sums [n_bins], counts [n_bins])``; accumulate over batches, then divide.
    """
    idx = jnp.clip((t * n_bins).astype(jnp.int32), 0, n_bins - 1)
    sums = jnp.zeros((n_bins,), jnp.float32).at[idx].add(values.astype(jnp.float32))
    counts = jnp.zeros((n_bins,), jnp.float32).at[idx].add(1.0)
    return sums, counts
