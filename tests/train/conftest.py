"""Shared pieces of the trainer tests: a small toy2d config and a sequence experiment with two batch shapes."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.loss import CFMLoss
from train.config import Config, OptimConfig, TrainConfig, apply_overrides
from train.configs import toy2d
from train.experiment import Experiment

# toy2d at test size: a 2-layer MLP of width 32 (its 32x32 kernel is big enough to be FSDP-sharded).
SMALL_TOY = [
    "model.hidden=32", "model.depth=2", "train.batch_size=16", "train.steps=12", "train.log_every=4",
    "train.ckpt_every=4", "train.eval_every=0", "optim.warmup_steps=2", "data.eval_points=64",
    "data.eval_batches=1", "data.ode_steps=4",
]


def small_toy(*overrides: str) -> Config:
    """The toy2d tiny preset shrunk by :data:`SMALL_TOY`, then ``overrides``."""
    return apply_overrides(toy2d.get_config("tiny"), SMALL_TOY + list(overrides))


@pytest.fixture
def toy_config():
    return small_toy


@pytest.fixture
def toy_overrides():
    return list(SMALL_TOY)


# ------------------------------------------------------------------------------- a sequence experiment


@jax.custom_vjp
def _poison_grad(x, poison):
    return x


def _poison_fwd(x, poison):
    return x, poison


def _poison_bwd(poison, g):
    return g * jnp.where(poison > 0, jnp.nan, 1.0), jnp.zeros_like(poison)


_poison_grad.defvjp(_poison_fwd, _poison_bwd)


class _FrameNet(nn.Module):
    @nn.compact
    def __call__(self, t, x):
        h = jnp.concatenate([x, jnp.broadcast_to(t[:, None, None], x.shape[:2] + (1,))], -1)  # [b, t, 3]
        return nn.Dense(2, name="proj")(nn.tanh(nn.Dense(8, name="hidden")(h)))


@dataclasses.dataclass(frozen=True)
class SeqData:
    """lengths: the frame lengths batches cycle through; poison_loss/poison_grad: data positions whose batch
    makes the loss NaN / the gradient of ``proj``'s kernel NaN; bad: ``{position: kind}`` broken batches."""

    lengths: tuple[int, ...] = (8, 16)
    poison_loss: int = -1
    poison_grad: int = -1
    bad: tuple[tuple[int, str], ...] = ()


class SeqToy(Experiment):
    """Masked [b, t, 2] sequences of variable length (a stand-in for bucketed mel batches)."""

    net = _FrameNet()
    loss = CFMLoss()

    def init_params(self, key):
        return self.net.init(key, jnp.zeros((1,)), jnp.zeros((1, 4, 2)))

    def loss_fn(self, params, batch, key):
        p = batch["poison"][0]
        params = jax.tree.map(lambda x: x, params)
        kernel = params["params"]["proj"]["kernel"]
        params["params"]["proj"]["kernel"] = _poison_grad(kernel, (p == 2).astype(kernel.dtype))
        loss, aux = self.loss(lambda t, x, c: self.net.apply(params, t, x), batch["x"], batch["mask"], key=key)
        loss = jnp.where(p == 1, jnp.nan, loss)
        return loss, {"per_example": aux["per_example"], "t": aux["t"]}

    def _batch(self, position: int) -> dict:
        dc, b = self.config.data, self.config.train.batch_size
        rng = np.random.default_rng(position)
        length = dc.lengths[position % len(dc.lengths)]
        valid = rng.integers(1, length + 1, size=b)
        mask = (np.arange(length)[None] < valid[:, None]).astype(np.float32)
        x = (rng.normal(size=(b, length, 2)) * mask[..., None]).astype(np.float32)
        poison = 1.0 if position == dc.poison_loss else 2.0 if position == dc.poison_grad else 0.0
        batch = {"x": x, "mask": mask, "poison": np.full((b,), poison, np.float32)}
        kind = dict(dc.bad).get(position)
        if kind == "nan":
            batch["x"][0, 0, 0] = np.nan
        elif kind == "dtype":
            batch["mask"] = batch["mask"].astype(np.float64)
        return batch

    def train_batches(self, seed, position):
        while True:
            yield self._batch(position), position + 1
            position += 1

    def eval_batches(self):
        return [self._batch(0)]


def seq_config(**data) -> Config:
    return Config(
        experiment="seq", model=None, data=SeqData(**data), optim=OptimConfig(lr=1e-2, warmup_steps=1),
        train=TrainConfig(steps=6, batch_size=4, log_every=5, ckpt_every=2, keep_checkpoints=5),
    )


@pytest.fixture
def seq_experiment():
    """``make(**SeqData fields, train=dict(...))`` -> a built :class:`SeqToy`."""

    def make(train: dict | None = None, **data):
        cfg = seq_config(**data)
        if train:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))
        return SeqToy(cfg)

    return make
