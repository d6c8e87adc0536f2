"""The training state (arrays only) and its creation: ``eval_shape`` → shardings → jitted init."""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fmjax.typing import Array, Int, Key, PyTree

__all__ = ["TrainState", "make_state", "abstract_state", "create_state", "state_from_params"]


@flax.struct.dataclass
class TrainState:
    """Everything a run carries from step to step; a pytree of arrays (checkpointed, donated, sharded).

    Attributes:
      step: int32 ``[]``, optimizer steps taken.
      params: the model parameters (float32).
      opt_state: the optimizer state (mirrors params).
      ema_params: exponential moving average of the parameters.
    """

    step: Int[Array, ""]
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree


def make_state(params: PyTree, optimizer: optax.GradientTransformation) -> TrainState:
    """The step-0 state of ``params`` (pure; EMA starts at the parameters)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )


def abstract_state(init_params: Callable[[Key], PyTree], optimizer, key: Key) -> TrainState:
    """Shapes and dtypes of the fresh state (``jax.ShapeDtypeStruct`` leaves); nothing is computed."""
    return jax.eval_shape(lambda k: make_state(init_params(k), optimizer), key)


def create_state(init_params: Callable[[Key], PyTree], optimizer, key: Key, shardings) -> TrainState:
    """A fresh state, initialised by one jitted call directly into ``shardings`` (from
    :func:`train.sharding.state_shardings`), so no device ever holds more than its shards."""
    return jax.jit(lambda k: make_state(init_params(k), optimizer), out_shardings=shardings)(key)


def state_from_params(params: PyTree, optimizer, shardings) -> TrainState:
    """A step-0 state around given (host or device) parameters, placed into ``shardings``."""
    return jax.jit(lambda p: make_state(p, optimizer), out_shardings=shardings)(params)
