"""Reflow and distillation for (conditional) flows (Liu et al., "Flow Straight and Fast", 2022).

A trained flow (the teacher, "1-rectified flow") defines a deterministic coupling: noise ``x0`` ↦ its ODE
sample ``x̂1``. Training a new flow on the fixed pairs ``(x0, x̂1)`` (and their conditions) gives the
``k+1``-rectified flow, whose paths are straighter, so few-step sampling improves. Distillation fits the
straight-line velocity only at the times of a k-step grid (``k = 1``: regress ``x̂1`` from ``x0`` in one step).

This module holds the model-agnostic parts:

* :func:`generate_couplings` — teacher samples for given noise and conditions (any solver/grid/NFE, CFG);
* :class:`CouplingStore` — couplings on disk in shards, written atomically, generation resumable without
  duplicating or losing a shard, with a progress bar;
* :func:`straightness` — ``S = E_t ‖(x̂1 − x0) − v(x_t, t)‖²`` along the model's own ODE path;
* :func:`nfe_curve` — sample error against a reference for several NFE;
* :class:`GridT` — the t-sampler of k-step distillation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fmjax.samplers import classifier_free_guidance, sample
from fmjax.timesteps import TSampler, time_grid
from fmjax.typing import Array, Float

__all__ = ["generate_couplings", "CouplingStore", "straightness", "nfe_curve", "GridT"]


def generate_couplings(
    velocity: Callable,
    x0: Float[Array, "b ..."],
    cond=None,
    grid=None,
    solver: str = "euler",
    *,
    cfg_weight: float = 0.0,
) -> Float[Array, "b ..."]:
    """The teacher's ODE samples ``x̂1`` for noise ``x0`` and conditions ``cond`` (batch first).

    Args:
      velocity: teacher closure ``velocity(t, x, cond)``.
      x0: ``[b, ...]`` noise; cond: conditions (pytree) or None.
      grid: time grid (default: linear, 64 steps — a teacher should be integrated accurately).
      solver: any fmjax solver; cfg_weight: classifier-free guidance weight (0 = none).
    """
    grid = time_grid("linear", 64) if grid is None else grid
    if cfg_weight:
        velocity = classifier_free_guidance(velocity, cfg_weight)
    x1, _ = sample(velocity, x0, cond, grid, solver)
    return x1


def straightness(
    velocity: Callable,
    x0: Float[Array, "b ..."],
    cond=None,
    *,
    n_steps: int = 64,
    solver: str = "euler",
    mask: Float[Array, "b ..."] | None = None,
) -> tuple[Float[Array, ""], Float[Array, "b"]]:
    """Straightness of a flow: ``S = E_t E ‖(x̂1 − x0) − v(x_t, t)‖²`` along its own ODE path.

    The path is integrated on a uniform grid of ``n_steps``; ``v`` is evaluated at every grid time before the
    last; ``x̂1`` is the end point. ``S = 0`` iff every path is a straight line at constant speed. The squared
    norm is averaged over the feature axes (per element), so values are comparable across data sizes; with
    ``mask`` (``[b, ...]`` = ``x0.shape[:-1]``, 1 at valid frames) only valid elements count (padded mels).

    Returns ``(S, S_per_example [b])``.
    """
    if mask is not None and tuple(jnp.shape(mask)) != tuple(x0.shape[:-1]):
        raise ValueError(f"mask: expected shape {tuple(x0.shape[:-1])} (x0 without its feature axis), "
                         f"got {tuple(jnp.shape(mask))}")
    b = x0.shape[0]
    weight = jnp.ones(x0.shape, jnp.float32) if mask is None else jnp.broadcast_to(
        jnp.asarray(mask, jnp.float32)[..., None], x0.shape)  # [b, ...] per element
    weight = weight.reshape(b, -1)
    grid = jnp.asarray(time_grid("linear", n_steps))
    x1, aux = sample(velocity, x0, cond, grid, solver, return_trajectory=True)
    states = jnp.concatenate([x0[None], aux.trajectory[:-1]], axis=0)  # [n, b, ...] state at grid[:-1]
    chord = x1 - x0

    def dev(t, x):
        v = velocity(jnp.full((b,), t), x, cond)
        return jnp.sum(((chord - v) ** 2).reshape(b, -1) * weight, axis=1) / jnp.maximum(weight.sum(1), 1.0)

    per = jnp.mean(jax.vmap(dev)(grid[:-1], states), axis=0)  # mean over t
    return jnp.mean(per), per


def nfe_curve(
    velocity: Callable,
    x0,
    cond,
    reference,
    nfes=(1, 2, 4, 8, 16),
    *,
    grid: str = "linear",
    solver: str = "euler",
    metric: Callable | None = None,
) -> dict[int, float]:
    """Sample error vs number of steps: ``{n: metric(sample with n steps, reference)}``.

    ``metric`` defaults to the mean squared error per element against ``reference`` (e.g. the teacher's own
    high-NFE sample of the same ``x0``); pass a distribution metric (sliced W2 to data) to compare
    distributions instead. ``n`` counts solver steps (NFE = n · stages).
    """
    metric = metric or (lambda x, y: float(jnp.mean((x - y) ** 2)))
    run = jax.jit(lambda g: sample(velocity, x0, cond, g, solver)[0])
    return {int(n): float(metric(run(jnp.asarray(time_grid(grid, int(n)))), reference)) for n in nfes}


@dataclasses.dataclass(frozen=True)
class GridT(TSampler):
    """Training times restricted to a k-step grid ``{0, 1/k, …, (k−1)/k}`` (k-step distillation; ``k = 1`` trains
    only at ``t = 0``, i.e. regresses ``x̂1 − x0`` from ``x0``)."""

    k: int = 1

    def __post_init__(self):
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ValueError(f"k: expected an int >= 1, got {self.k!r}")

    def transform(self, u):
        return jnp.floor(u * self.k) / self.k


class CouplingStore:
    """Couplings on disk: ``shard_00000.npz, …`` plus ``manifest.json`` describing how they were made.

    Each shard is a dict of arrays with the batch axis first (e.g. ``x0``, ``x1`` and the conditions), written
    to a temporary file and renamed into place, so a shard is either complete or absent. Generation is
    resumable: shard ``i`` is produced by ``make_shard(i)`` (which must be a pure function of ``i`` — derive its
    PRNG key with ``jax.random.fold_in(key, i)``), and shards already on disk are skipped, so an interrupted run
    neither duplicates nor loses a shard. The manifest pins the generation settings; resuming with different
    settings is an error rather than a silent mix.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = pathlib.Path(directory)

    def shard_path(self, i: int) -> pathlib.Path:
        return self.dir / f"shard_{i:05d}.npz"

    @property
    def manifest(self) -> dict | None:
        path = self.dir / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def complete_shards(self) -> list[int]:
        """Indices of the shards present on disk (complete by construction)."""
        return sorted(int(p.stem.split("_")[1]) for p in self.dir.glob("shard_*.npz"))

    def generate(self, make_shard: Callable[[int], dict], num_shards: int, settings: dict, *, progress: bool = True):
        """Writes every missing shard ``0 … num_shards − 1``.

        Args:
          make_shard: ``i -> {name: array [n_i, ...]}``, a pure function of ``i``.
          num_shards: total shards wanted.
          settings: JSON-serialisable description (teacher, grid, NFE, CFG, seed, …) stored in the manifest.
          progress: show a tqdm bar.
        """
        if not (isinstance(num_shards, int) and num_shards >= 1):
            raise ValueError(f"num_shards: expected an int >= 1, got {num_shards!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {"num_shards": num_shards, "settings": settings}
        existing = self.manifest
        if existing is not None and existing != json.loads(json.dumps(manifest)):
            raise ValueError(
                f"settings: {self.dir} holds couplings made with {existing}, not {manifest}; use another directory"
            )
        _atomic_write_text(self.dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        todo = [i for i in range(num_shards) if not self.shard_path(i).exists()]
        for i in tqdm(todo, desc="couplings", unit="shard", disable=not progress):
            arrays = {k: np.asarray(v) for k, v in make_shard(i).items()}
            tmp = self.shard_path(i).with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, self.shard_path(i))
        for stale in self.dir.glob("*.tmp.npz"):  # leftovers of a killed write
            stale.unlink()

    def load(self) -> dict[str, np.ndarray]:
        """All shards concatenated along the batch axis (in shard order)."""
        manifest = self.manifest
        if manifest is None:
            raise FileNotFoundError(f"{self.dir} has no manifest.json: no couplings were generated there")
        have = self.complete_shards()
        if have != list(range(manifest["num_shards"])):
            missing = sorted(set(range(manifest["num_shards"])) - set(have))
            raise ValueError(f"couplings in {self.dir} are incomplete: missing shards {missing}; run generate again")
        parts = [self.load_shard(i) for i in have]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def load_shard(self, i: int) -> dict[str, np.ndarray]:
        """Shard ``i``'s arrays (shards of different shapes, e.g. per length bucket, are read one by one)."""
        path = self.shard_path(i)
        if not path.exists():
            raise FileNotFoundError(f"{path}: shard {i} has not been generated")
        with np.load(path) as data:
            return dict(data)


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
