"""The supervised head of :class:`fmjax.data.tokenizer.SpeechTokenizer`: a one-hidden-layer MLP classifier.

``logits = tanh(x @ w1 + b1) @ w2 + b2``, trained with softmax cross-entropy by AdamW on minibatches drawn from
a PRNG key, the whole loop one jitted ``lax.scan`` (deterministic given the key on a given backend). Training
runs in float32 under JAX; the trained weights are returned as numpy float32 and the tokenizer evaluates them on
the host in float64 (:func:`mlp_logits`), so that encoding does not depend on the device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.typing import Key

__all__ = ["train_mlp", "mlp_logits"]


def mlp_logits(params: dict, x: np.ndarray) -> np.ndarray:
    """Host-side float64 logits ``[n, K]`` of features ``x [n, d]``: ``tanh(x w1 + b1) w2 + b2``, or the linear
    head ``x w2 + b2`` when ``params`` has no ``w1``."""
    h = np.asarray(x, np.float64)
    if params.get("w1") is not None:
        h = np.tanh(h @ np.asarray(params["w1"], np.float64) + np.asarray(params["b1"], np.float64))
    return h @ np.asarray(params["w2"], np.float64) + np.asarray(params["b2"], np.float64)


@functools.partial(jax.jit, static_argnames=("n_classes", "hidden", "steps", "batch"))
def _train(x, y, key, lr, weight_decay, *, n_classes: int, hidden: int, steps: int, batch: int):
    import optax

    d = x.shape[1]
    k1, k2, k_batch = jax.random.split(key, 3)
    params = {"w1": jax.random.normal(k1, (d, hidden)) / np.sqrt(d), "b1": jnp.zeros(hidden),
              "w2": jax.random.normal(k2, (hidden, n_classes)) / np.sqrt(hidden), "b2": jnp.zeros(n_classes)}
    opt = optax.adamw(lr, weight_decay=weight_decay)

    def loss_fn(p, xb, yb):
        logits = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]  # [batch, K]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(carry, i):
        p, state = carry
        idx = jax.random.randint(jax.random.fold_in(k_batch, i), (batch,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return params, losses


def train_mlp(x, y, n_classes: int, key: Key, *, hidden: int = 256, steps: int = 1000, batch: int = 512,
              lr: float = 3e-3, weight_decay: float = 1e-4) -> tuple[dict, np.ndarray]:
    """Fits the MLP on features ``x [n, d]`` and integer labels ``y [n]`` in ``[0, n_classes)``.

    Returns:
      ``(params, loss [steps])``: numpy float32 ``w1 [d, hidden]``, ``b1``, ``w2 [hidden, n_classes]``, ``b2``, and
      the minibatch loss of every step.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x: expected features of shape [n >= 1, d], got {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y: expected integer labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y: expected labels in [0, n_classes={n_classes}), got [{y.min()}, {y.max()}]")
    for name, v in (("hidden", hidden), ("steps", steps), ("batch", batch)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    params, losses = _train(jnp.asarray(x), jnp.asarray(y, jnp.int32), key, lr, weight_decay,
                            n_classes=n_classes, hidden=hidden, steps=steps, batch=batch)
    return {k: np.asarray(v, np.float32) for k, v in params.items()}, np.asarray(losses)
