"""Data parallelism over every device: a 1-D mesh, batches sharded on it.

The default path is ``jax.jit`` with ``NamedSharding``: parameters and
optimizer state are replicated, the batch is split along its first axis over
the ``'data'`` mesh axis, and XLA inserts the gradient all-reduce. The same
code runs on one device, several local devices, and several processes.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``'data'`` over ``devices`` (default: all, global)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(name: str, global_batch: int, mesh: Mesh) -> None:
  """Raises ValueError unless the mesh's device count divides the batch."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(
        f'{name}={global_batch} is not divisible by the {n} devices; set '
        f'--config.{name} to a multiple of {n}')


def put_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host arrays of this process's rows -> one global array sharded on mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
