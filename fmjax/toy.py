"""Toy 2-D flow matching: distributions, a small MLP velocity model, sample-quality metrics, a quick fit.

Used by the tests, the notebooks and the ablation harness: everything here runs on a laptop CPU in seconds.
Points are ``[p, 2]`` arrays (``p`` points). The MeanFlow version (:mod:`fmjax.meanflow`): ``ToyMLP(mean_flow=True)``
takes the interval end ``r`` and :func:`fit_toy_mean_flow` trains it; sample it with ``solver="meanflow"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmjax.loss import CFMLoss, LossDraws
from fmjax.meanflow import IntervalSampler, MeanFlowDraws, MeanFlowLoss
from fmjax.paths import rectified_path
from fmjax.samplers import classifier_free_guidance, sample
from fmjax.timesteps import Uniform, linear_grid
from fmjax.typing import Array, Float, Key

__all__ = [
    "eight_gaussians", "two_moons", "checkerboard", "standard_normal", "DISTRIBUTIONS", "get_distribution",
    "eight_gaussians_labeled", "two_moons_labeled", "LABELED", "get_labeled", "one_hot",
    "ToyMLP", "sliced_wasserstein", "mmd_rbf", "ToyFit", "fit_toy_flow", "fit_toy_mean_flow", "sample_toy",
    "toy_velocity",
]


# ------------------------------------------------------------------------------------------- distributions


def standard_normal(key: Key, n: int) -> Float[Array, "p 2"]:
    """``n`` points from N(0, I) in 2-D."""
    return jax.random.normal(key, (n, 2))


def eight_gaussians_labeled(key: Key, n: int, radius: float = 2.0, std: float = 0.2):
    """A ring of 8 Gaussians; returns ``(points [n, 2], labels [n])`` with the mode index as label."""
    k_c, k_n = jax.random.split(key)
    idx = jax.random.randint(k_c, (n,), 0, 8)
    ang = idx.astype(jnp.float32) * (2 * math.pi / 8)
    centres = radius * jnp.stack([jnp.cos(ang), jnp.sin(ang)], axis=-1)
    return centres + std * jax.random.normal(k_n, (n, 2)), idx


def eight_gaussians(key: Key, n: int, radius: float = 2.0, std: float = 0.2) -> Float[Array, "p 2"]:
    """A ring of 8 Gaussians of std ``std`` at radius ``radius``."""
    return eight_gaussians_labeled(key, n, radius, std)[0]


def two_moons_labeled(key: Key, n: int, noise: float = 0.08):
    """Two interleaved half circles (centred, roughly unit variance); returns ``(points [n, 2], labels [n])``
    with label 0 for the upper and 1 for the lower moon."""
    k_a, k_s, k_n = jax.random.split(key, 3)
    ang = jax.random.uniform(k_a, (n,)) * math.pi
    upper = jax.random.bernoulli(k_s, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(ang), 1.0 - jnp.cos(ang))
    y = jnp.where(upper, jnp.sin(ang), 0.5 - jnp.sin(ang))
    pts = jnp.stack([x - 0.5, y - 0.25], axis=-1) * 1.6
    return pts + noise * jax.random.normal(k_n, (n, 2)), (~upper).astype(jnp.int32)


def two_moons(key: Key, n: int, noise: float = 0.08) -> Float[Array, "p 2"]:
    """Two interleaved half circles, centred and scaled to roughly unit variance."""
    return two_moons_labeled(key, n, noise)[0]


def checkerboard(key: Key, n: int, size: int = 4) -> Float[Array, "p 2"]:
    """Uniform on the black squares of a ``size × size`` checkerboard over [-2, 2]²."""
    k_x, k_y, k_c = jax.random.split(key, 3)
    cell = 4.0 / size
    ix = jax.random.randint(k_x, (n,), 0, size)
    iy = 2 * jax.random.randint(k_y, (n,), 0, size // 2) + (ix % 2)
    off = jax.random.uniform(k_c, (n, 2)) * cell
    return jnp.stack([ix, iy], axis=-1).astype(jnp.float32) * cell - 2.0 + off


DISTRIBUTIONS: dict[str, Callable] = {
    "normal": standard_normal, "8gaussians": eight_gaussians, "moons": two_moons, "checkerboard": checkerboard,
}


LABELED: dict[str, tuple[Callable, int]] = {"moons": (two_moons_labeled, 2), "8gaussians": (eight_gaussians_labeled, 8)}


def get_labeled(name: str) -> tuple[Callable, int]:
    """A labelled sampler ``(key, n) -> (points [n, 2], labels [n])`` and its number of classes."""
    if name not in LABELED:
        raise ValueError(f"target: class-conditional training needs one of {sorted(LABELED)}, got {name!r}")
    return LABELED[name]


def get_distribution(name: str) -> Callable:
    """A sampler ``(key, n) -> [n, 2]`` by name: ``normal``, ``8gaussians``, ``moons``, ``checkerboard``."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"distribution: expected one of {sorted(DISTRIBUTIONS)}, got {name!r}")
    return DISTRIBUTIONS[name]


# ------------------------------------------------------------------------------------------------- model


class ToyMLP(nn.Module):
    """Velocity MLP for 2-D points: ``(t [b], x [b, 2], cond [b, K] | None, r [b] | None) -> v [b, 2]``.

    ``cond`` is a one-hot class label (zeros = unconditional, the CFG null condition) when ``num_classes > 0``.
    With ``mean_flow`` the output is the average velocity over ``[t, r]`` (``r`` None = ``t``): the sinusoidal
    features of ``r − t`` enter the first layer through a zero-initialised ``interval`` projection, so a MeanFlow
    model initialised from a flow's params (plus that projection) starts as the flow.

    Attributes:
      hidden: width; depth: hidden layers; time_features: sinusoidal features of t; num_classes: K (0 = none);
      mean_flow: take the interval end ``r``.
    """

    hidden: int = 128
    depth: int = 3
    time_features: int = 16
    num_classes: int = 0
    mean_flow: bool = False

    @nn.compact
    def __call__(self, t: Float[Array, "b"], x: Float[Array, "b 2"], cond=None, r=None) -> Float[Array, "b 2"]:
        half = self.time_features // 2
        freqs = jnp.exp(jnp.arange(half) * (math.log(100.0) / max(half - 1, 1)))
        ang = t[:, None] * freqs[None, :]  # [b, half]
        feats = [x, jnp.sin(ang), jnp.cos(ang)]
        if r is not None and not self.mean_flow:
            raise ValueError("r: this ToyMLP is a plain flow (mean_flow=False) and takes no interval end")
        if self.num_classes:
            if cond is None:
                cond = jnp.zeros((x.shape[0], self.num_classes), x.dtype)
            if cond.shape != (x.shape[0], self.num_classes):
                raise ValueError(f"cond: expected one-hot labels [{x.shape[0]}, {self.num_classes}], got {cond.shape}")
            feats.append(cond)
        h = jnp.concatenate(feats, axis=-1)  # [b, 2 + 2 half (+ K)]
        for i in range(self.depth):
            h = nn.Dense(self.hidden, name=f"dense{i}")(h)
            if i == 0 and self.mean_flow:
                ang_r = ((t if r is None else r) - t)[:, None] * freqs[None, :]  # [b, half]
                h = h + nn.Dense(self.hidden, use_bias=False, kernel_init=nn.initializers.zeros, name="interval")(
                    jnp.concatenate([jnp.sin(ang_r), jnp.cos(ang_r)], axis=-1))
            h = nn.silu(h)
        return nn.Dense(x.shape[-1], name="out")(h)


def toy_velocity(model: ToyMLP, params) -> Callable:
    """The sampler closure ``velocity(t, x, cond, r=None)`` of a toy model (``r``: a MeanFlow model's interval end,
    passed by the ``meanflow`` solver)."""
    return lambda t, x, cond, r=None: model.apply(params, t, x, cond, r)


# ----------------------------------------------------------------------------------------------- metrics


def sliced_wasserstein(key: Key, x: Float[Array, "p d"], y: Float[Array, "p d"], n_proj: int = 256):
    """Sliced Wasserstein-2 distance between two equal-size point clouds (random unit directions)."""
    if x.shape != y.shape:
        raise ValueError(f"x, y: expected equal shapes, got {x.shape} and {y.shape}")
    dirs = jax.random.normal(key, (x.shape[-1], n_proj))
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    px = jnp.sort(x @ dirs, axis=0)  # [p, n_proj]
    py = jnp.sort(y @ dirs, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))


def mmd_rbf(x: Float[Array, "p d"], y: Float[Array, "q d"], bandwidths=(0.1, 0.5, 1.0, 2.0)):
    """Biased MMD² with a sum of RBF kernels."""

    def k(a, b):
        d2 = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return sum(jnp.exp(-d2 / (2 * s**2)) for s in bandwidths)

    return jnp.mean(k(x, x)) + jnp.mean(k(y, y)) - 2 * jnp.mean(k(x, y))


# -------------------------------------------------------------------------------------------------- fit


@dataclasses.dataclass(frozen=True)
class ToyFit:
    """Result of :func:`fit_toy_flow`: the model, trained params and the loss at every step ``[steps]``."""

    model: ToyMLP
    params: dict
    losses: np.ndarray


def one_hot(labels, num_classes: int):
    """One-hot class conditions ``[n, K]`` (the toy models' ``cond``)."""
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def fit_toy_flow(
    key: Key,
    source: str = "8gaussians",
    target: str = "moons",
    *,
    steps: int = 500,
    batch: int = 256,
    lr: float = 3e-3,
    model: ToyMLP | None = None,
    loss: CFMLoss | None = None,
    conditional: bool = False,
    couplings: tuple | None = None,
    params=None,
) -> ToyFit:
    """Trains a :class:`ToyMLP` flow from ``source`` to ``target`` with Adam, as one jitted ``lax.scan``.

    Args:
      key: PRNG key (init, batches and loss draws are split from it).
      source, target: distribution names (see :func:`get_distribution`); x0 is drawn from ``source``.
      steps, batch, lr: optimisation settings.
      model: the MLP (default ``ToyMLP()``, with ``num_classes`` set when ``conditional``).
      loss: a :class:`CFMLoss` (default: rectified path, uniform t; set ``cfg_rate`` for CFG training), or a
        :class:`~fmjax.meanflow.MeanFlowLoss` for a MeanFlow model (``model.mean_flow``; see :func:`fit_toy_mean_flow`).
      conditional: condition on the target's class label (one-hot), e.g. which moon.
      couplings: optional fixed pairs ``(x0 [N, 2], x1 [N, 2])`` or ``(x0, x1, cond [N, K])`` to train on instead
        of independent draws (reflow); minibatches are sampled from them with replacement.
      params: start from these parameters instead of a fresh init (reflow starts from the teacher).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    src = get_distribution(source)
    if conditional:
        tgt_labeled, num_classes = get_labeled(target)
    else:
        tgt, num_classes = get_distribution(target), 0
    model = model or ToyMLP(num_classes=num_classes)
    if model.num_classes != num_classes:
        raise ValueError(f"model: expected num_classes={num_classes} for conditional={conditional}, got {model.num_classes}")
    loss = loss or CFMLoss(path=rectified_path())
    mean = isinstance(loss, MeanFlowLoss)
    if mean != model.mean_flow:
        raise ValueError(f"loss: a {'MeanFlowLoss' if mean else 'CFMLoss'} trains a model with mean_flow={mean}, "
                         f"got mean_flow={model.mean_flow}")
    if couplings is not None:
        pairs = tuple(jnp.asarray(c, jnp.float32) for c in couplings)
        if len(pairs) != (3 if conditional else 2) or pairs[0].shape != pairs[1].shape or pairs[0].ndim != 2:
            raise ValueError(
                f"couplings: expected {'(x0, x1, cond)' if conditional else '(x0, x1)'} with x0, x1 [N, d] of equal "
                f"shape, got {[p.shape for p in pairs]}"
            )
    k_init, k_train = jax.random.split(key)
    if params is None:
        cond0 = jnp.zeros((1, num_classes)) if num_classes else None
        params = model.init(k_init, jnp.zeros((1,)), jnp.zeros((1, 2)), cond0)
    opt = optax.adam(lr)

    def step(carry, k):
        params, opt_state = carry
        k_src, k_tgt, k_loss = jax.random.split(k, 3)
        cond = None
        if couplings is not None:
            idx = jax.random.randint(k_src, (batch,), 0, pairs[0].shape[0])
            x0, x1 = pairs[0][idx], pairs[1][idx]
            cond = pairs[2][idx] if conditional else None
        elif conditional:
            x0 = src(k_src, batch)
            x1, labels = tgt_labeled(k_tgt, batch)
            cond = one_hot(labels, num_classes)
        else:
            x0, x1 = src(k_src, batch), tgt(k_tgt, batch)

        def objective(p):
            draws = MeanFlowDraws(z=x0) if mean else LossDraws(z=x0)
            value, _ = loss(toy_velocity(model, p), x1, None, cond, k_loss, draws=draws)
            return value

        value, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    (params, _), losses = run((params, opt.init(params)), jax.random.split(k_train, steps))
    return ToyFit(model, params, np.asarray(losses))


def fit_toy_mean_flow(
    key: Key,
    source: str = "8gaussians",
    target: str = "moons",
    *,
    steps: int = 500,
    batch: int = 256,
    lr: float = 3e-3,
    loss: MeanFlowLoss | None = None,
    conditional: bool = False,
    model: ToyMLP | None = None,
    params=None,
) -> ToyFit:
    """Trains a MeanFlow :class:`ToyMLP` (``mean_flow=True``) with :class:`~fmjax.meanflow.MeanFlowLoss` (default:
    rectified path, uniform ``t``/``r`` pairs with ``r ≠ t`` for half of the rows, adaptive weight ``p = 1``), as
    :func:`fit_toy_flow` does a flow."""
    loss = loss or MeanFlowLoss(path=rectified_path(), intervals=IntervalSampler(Uniform(), 0.5))
    if model is None:
        model = ToyMLP(num_classes=get_labeled(target)[1] if conditional else 0, mean_flow=True)
    return fit_toy_flow(key, source, target, steps=steps, batch=batch, lr=lr, model=model, loss=loss,
                        conditional=conditional, params=params)


def sample_toy(
    fit: ToyFit,
    key: Key,
    source: str = "8gaussians",
    n: int = 2000,
    grid=None,
    solver="euler",
    *,
    cond=None,
    cfg_weight: float = 0.0,
):
    """Draws ``n`` source points and pushes them through the fitted flow. Returns ``(x0, x1)``, each ``[n, 2]``.

    ``cond`` (one-hot ``[n, K]``) conditions a class-conditional model; ``cfg_weight > 0`` applies classifier-free
    guidance against the all-zero (unconditional) label.
    """
    grid = linear_grid(32) if grid is None else grid
    x0 = get_distribution(source)(key, n)
    velocity = toy_velocity(fit.model, fit.params)
    if cfg_weight:
        velocity = classifier_free_guidance(velocity, cfg_weight)
    x1, _ = sample(velocity, x0, cond, grid, solver)
    return x0, x1
