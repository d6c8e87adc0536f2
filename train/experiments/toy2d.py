"""The toy2d experiment: a flow between 2-D point distributions with :class:`fmjax.toy.ToyMLP` (the trainer's smoke
test). Its config (presets, expected results) is ``train/configs/toy2d.py``."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.loss import CFMLoss, LossDraws
from fmjax.paths import CondOTPath
from fmjax.samplers import sample
from fmjax.timesteps import get_t_sampler, linear_grid
from fmjax.toy import ToyMLP, get_distribution, sliced_wasserstein
from train.config import Config
from train.experiment import Experiment
from train.plots import plot_points

__all__ = ["ModelConfig", "DataConfig", "Toy2D", "CHUNK"]

CHUNK = 64  # training batches drawn per device call (amortises dispatch; the data do not depend on it)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The velocity MLP and its loss.

    Attributes:
      hidden, depth, time_features: :class:`fmjax.toy.ToyMLP`.
      sigma_min: the conditional-OT path's ``sigma_min`` (0 = rectified flow).
      t_sampler: training time sampler name (:func:`fmjax.timesteps.get_t_sampler`).
    """

    hidden: int = 128
    depth: int = 3
    time_features: int = 16
    sigma_min: float = 0.0
    t_sampler: str = "uniform"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Source/target distributions (:data:`fmjax.toy.DISTRIBUTIONS`) and evaluation sizes.

    Attributes:
      source, target: distribution names; x0 ~ source, x1 ~ target.
      eval_batches: validation batches of ``train.batch_size`` pairs (fixed draws).
      eval_points: points generated for the sliced-W2 metric and the scatter plot.
      ode_steps: Euler steps when sampling.
    """

    source: str = "8gaussians"
    target: str = "moons"
    eval_batches: int = 4
    eval_points: int = 2000
    ode_steps: int = 32

    def __post_init__(self):
        for name in ("source", "target"):
            get_distribution(getattr(self, name))  # raises ValueError for an unknown name
        for name in ("eval_batches", "eval_points", "ode_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}: expected an int >= 1, got {getattr(self, name)!r}")
        if self.eval_batches > CHUNK:
            raise ValueError(f"data.eval_batches: expected at most {CHUNK}, got {self.eval_batches}")


class Toy2D(Experiment):
    """Independent pairs ``(x0 ~ source, x1 ~ target)``; batches ``{"x0": [b, 2], "x1": [b, 2]}`` (numpy)."""

    resume_safe_keys = ("data.eval_points", "data.eval_batches", "data.ode_steps")  # evaluation only: may change on resume

    def __init__(self, config: Config):
        super().__init__(config)
        mc, dc = config.model, config.data
        self.model = ToyMLP(hidden=mc.hidden, depth=mc.depth, time_features=mc.time_features)
        self.loss = CFMLoss(path=CondOTPath(mc.sigma_min), t_sampler=get_t_sampler(mc.t_sampler))
        src, tgt, b = get_distribution(dc.source), get_distribution(dc.target), config.train.batch_size

        def chunk(key, first):  # batches first .. first + CHUNK - 1; batch p depends on (key, p) only
            def pair(p):
                k = jax.random.fold_in(key, p)
                return src(jax.random.fold_in(k, 0), b), tgt(jax.random.fold_in(k, 1), b)

            return jax.vmap(pair)(first + jnp.arange(CHUNK))  # ([CHUNK, b, 2], [CHUNK, b, 2])

        k_src, k_tgt, k_sw = jax.random.split(jax.random.key(12345), 3)

        def generate(params):  # source, generated and target points and their sliced W2, from fixed keys
            x0 = src(k_src, dc.eval_points)
            x1, _ = sample(lambda t, x, c: self.model.apply(params, t, x), x0, None, linear_grid(dc.ode_steps))
            target = tgt(k_tgt, dc.eval_points)
            return x0, x1, target, sliced_wasserstein(k_sw, x1, target)

        self._chunk, self._generate = jax.jit(chunk), jax.jit(generate)

    def init_params(self, key):
        return self.model.init(key, jnp.zeros((1,)), jnp.zeros((1, 2)))

    def loss_fn(self, params, batch, key):
        velocity = lambda t, x, cond: self.model.apply(params, t, x)  # noqa: E731
        loss, aux = self.loss(velocity, batch["x1"], key=key, draws=LossDraws(z=batch["x0"]))
        return loss, {"per_example": aux["per_example"], "t": aux["t"]}

    def _batches(self, key, first: int) -> list[dict]:
        x0, x1 = (np.asarray(a) for a in jax.device_get(self._chunk(key, first)))
        return [{"x0": x0[i], "x1": x1[i]} for i in range(CHUNK)]

    def train_batches(self, seed: int, position: int):
        data_key = jax.random.fold_in(jax.random.key(seed), 1)
        while True:
            first = position - position % CHUNK
            for batch in self._batches(data_key, first)[position - first :]:
                position += 1
                yield batch, position

    def eval_batches(self):
        eval_key = jax.random.key(2**31 - 1)  # fixed: the same validation pairs for every run and seed
        return self._batches(eval_key, 0)[: self.config.data.eval_batches]

    def evaluate(self, params, step, workdir):
        return {"sliced_w2": float(self._generate(params)[3])}

    def write_samples(self, params, step, workdir):
        x0, generated, target, _ = jax.device_get(self._generate(params))
        if jax.process_index() != 0:
            return []
        out = pathlib.Path(workdir) / "samples" / f"step_{step:06d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        dc = self.config.data
        clouds = {f"source ({dc.source})": x0, f"generated ({dc.ode_steps} Euler steps)": generated,
                  f"target ({dc.target})": target}
        return [plot_points(clouds, out, f"toy2d at step {step}: {dc.source} → {dc.target}")]
