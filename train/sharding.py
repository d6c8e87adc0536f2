"""Device mesh and shardings: data parallelism over the batch, optional FSDP-style parameter sharding.

One mesh axis, ``data``. Batches are split along their leading axis over it. With ``fsdp=True`` every state
array (params, Adam moments, EMA) large enough is split along its largest dimension divisible by the axis
size, so each device holds ``1/n`` of the state (ZeRO-3 style); XLA inserts the all-gathers and
reduce-scatters. Small arrays and scalars stay replicated. The same code runs on one CPU and on many
accelerators; only the mesh changes.

Multi-host (several machines, one process each): call ``jax.distributed.initialize()`` first thing in every
process (on Cloud TPU and SLURM it discovers the coordinator itself; otherwise pass
``coordinator_address="host0:1234", num_processes=N, process_id=i``), then run the same command everywhere.
``jax.devices()`` then lists the devices of all hosts, :func:`make_mesh` spans them, every host computes the
same global batch from ``(seed, position)`` and :func:`shard_batch` places only its addressable shards.
Checkpoints need a directory all hosts can reach (orbax coordinates the processes); only process 0 writes
``metrics.jsonl``, TensorBoard and the loss curve, while the experiment's ``evaluate``/``write_samples`` hooks run
on every process (they compute on global arrays; they should write files from process 0 only).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["DATA_AXIS", "make_mesh", "replicated", "batch_sharding", "state_shardings", "shard_batch"]

DATA_AXIS = "data"

# Arrays with fewer elements than this stay replicated under FSDP (sharding them costs more than it saves).
FSDP_MIN_SIZE = 1024


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (0 = all), axis :data:`DATA_AXIS`."""
    devices = jax.devices()
    if not (isinstance(num_devices, int) and 0 <= num_devices <= len(devices)):
        raise ValueError(f"num_devices: expected an int in [0, {len(devices)}] (0 = all), got {num_devices!r}")
    return Mesh(np.asarray(devices[: num_devices or len(devices)]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full array on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over :data:`DATA_AXIS`; a prefix for every leaf of a batch pytree."""
    return NamedSharding(mesh, P(DATA_AXIS))


def _fsdp_spec(shape: tuple[int, ...], n: int) -> P:
    if n == 1 or math.prod(shape) < FSDP_MIN_SIZE:
        return P()
    dims = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in dims:
        if shape[i] % n == 0:
            return P(*[DATA_AXIS if j == i else None for j in range(len(shape))])
    return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool = False):
    """Shardings for every leaf of an abstract state (``jax.eval_shape`` output): replicated, or FSDP-split."""
    n = mesh.shape[DATA_AXIS]
    return jax.tree.map(
        lambda a: NamedSharding(mesh, _fsdp_spec(tuple(a.shape), n) if fsdp else P()), abstract_state
    )


def shard_batch(batch, mesh: Mesh):
    """Places a global host batch (a pytree of numpy arrays, identical on every host) as global ``jax.Array``s
    split along the batch axis; each process transfers only its own shards."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), batch)
