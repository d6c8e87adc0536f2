"""The pure train step and the validation step, and their jitted, sharded forms.

``train_step(state, batch, key) -> (state, metrics)`` folds ``state.step`` into ``key`` (so the random draws of
step ``i`` are the same whether or not the run was resumed), runs the loss forward/backward in the compute dtype
with float32 master parameters, clips, applies AdamW, updates the EMA and returns scalar metrics plus one
finiteness flag per gradient leaf (the host names the offending leaf if one goes NaN/inf).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fmjax.loss import per_t_bin
from fmjax.typing import Key, PyTree
from train.sharding import batch_sharding, replicated
from train.state import TrainState

__all__ = ["make_train_step", "make_eval_step", "jit_train_step", "jit_eval_step", "leaf_names", "cast_floating"]

RESERVED_AUX = ("per_example", "t", "weight")


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """``tree`` with every floating-point leaf cast to ``dtype`` (integer and bool leaves untouched)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _global_norm(tree: PyTree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def leaf_names(tree: PyTree) -> list[str]:
    """Readable paths of the leaves of ``tree`` in flattening order, e.g. ``params/dense0/kernel``."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        names.append("/".join(parts))
    return names


def make_train_step(
    loss_fn: Callable, optimizer: optax.GradientTransformation, schedule: optax.Schedule, *,
    ema_decay: float, compute_dtype: str = "float32",
) -> Callable:
    """The pure step ``train_step(state, batch, key) -> (new_state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss [], aux)`` (:meth:`train.experiment.Experiment.loss_fn`).
      optimizer, schedule: from :mod:`train.optim` (the schedule only feeds the logged ``lr``).
      ema_decay: ``ema = d * ema + (1 - d) * params``.
      compute_dtype: ``float32`` or ``bfloat16``: params and floating batch leaves are cast for the forward and
        backward passes; gradients arrive in float32 (the cast is differentiated), updates are float32.

    Returns:
      The step; its metrics are ``loss``, ``grad_norm`` (before clipping), ``lr``, ``grad_finite`` (bool
      ``[n_leaves]``, in :func:`leaf_names` order of the params) and the scalar entries of ``aux``.
    """
    dtype = jnp.dtype(compute_dtype)

    def objective(params, batch, key):
        loss, aux = loss_fn(cast_floating(params, dtype), cast_floating(batch, dtype), key)
        return loss.astype(jnp.float32), aux

    def train_step(state: TrainState, batch: PyTree, key: Key):
        key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch, key)
        finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])  # [n_leaves]
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
        metrics = {k: v.astype(jnp.float32) for k, v in aux.items() if k not in RESERVED_AUX and jnp.ndim(v) == 0}
        metrics.update(loss=loss, grad_norm=_global_norm(grads), lr=jnp.asarray(schedule(state.step)),
                       grad_finite=finite)
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    return train_step


def make_eval_step(loss_fn: Callable, compute_dtype: str = "float32", t_bins: int = 10) -> Callable:
    """``eval_step(params, batch, key) -> {loss_sum, weight_sum, bin_sums [t_bins], bin_counts [t_bins]}``: sums of
    the (weighted) per-example losses overall and per flow-time bin, to accumulate over a validation set."""
    dtype = jnp.dtype(compute_dtype)

    def eval_step(params, batch, key):
        _, aux = loss_fn(cast_floating(params, dtype), cast_floating(batch, dtype), key)
        missing = [k for k in ("per_example", "t") if k not in aux]
        if missing:
            raise ValueError(f"loss_fn: aux must hold 'per_example' [b] and 't' [b] for validation, lacks {missing}")
        per_example = aux["per_example"].astype(jnp.float32)
        weight = aux.get("weight", jnp.ones_like(per_example)).astype(jnp.float32)
        t = aux["t"].astype(jnp.float32)
        bin_sums, _ = per_t_bin(t, per_example * weight, t_bins)
        bin_counts, _ = per_t_bin(t, weight, t_bins)
        return dict(loss_sum=jnp.sum(per_example * weight), weight_sum=jnp.sum(weight), bin_sums=bin_sums,
                    bin_counts=bin_counts)

    return eval_step


def jit_train_step(train_step: Callable, shardings: TrainState, mesh) -> Callable:
    """``train_step`` jitted once per batch shape, state donated, state kept in ``shardings``, batch split
    over the data axis, metrics replicated."""
    return jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(eval_step: Callable, param_shardings: PyTree, mesh) -> Callable:
    """``eval_step`` jitted with the params in their state shardings and the batch split over the data axis."""
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding(mesh), replicated(mesh)),
                   out_shardings=replicated(mesh))
