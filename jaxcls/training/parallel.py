"""Data parallelism over every device: a 1-D mesh, batches sharded on it.

The default path is ``jax.jit`` with ``NamedSharding``: parameters and
optimizer state are replicated, the batch is split along its first axis over
the ``'data'`` mesh axis, and XLA inserts the gradient all-reduce. The same
code runs on one device, several local devices, and several processes.
"""

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcls.ops import fastpath

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
      f'--config.{name} to a multiple of {n}'
    )


def put_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host arrays of this process's rows -> one global array sharded on mesh."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, v)
    for k, v in local_batch.items()
  }


def process_shards(
  num_data_shards: int, batch_size: int
) -> tuple[int, tuple[int, ...]]:
  """``(num_shards, this process's shard ids)`` of the training split.

  ``num_data_shards`` 0 means one shard per process. Each process reads its
  own consecutive shards, and a global batch takes ``batch_size /
  num_shards`` examples from every shard.
  """
  num_shards = num_data_shards or jax.process_count()
  if num_shards % jax.process_count() or batch_size % num_shards:
    raise ValueError(
      f'num_data_shards={num_shards} must be a multiple of the '
      f'{jax.process_count()} processes and divide batch_size='
      f'{batch_size}; set --config.num_data_shards accordingly'
    )
  per_process = num_shards // jax.process_count()
  first = jax.process_index() * per_process
  return num_shards, tuple(range(first, first + per_process))


def initialize_distributed(config) -> None:
  """Starts ``jax.distributed`` when the config or the environment asks.

  It runs when ``config.distributed`` is true or ``JAX_COORDINATOR_ADDRESS``
  is set. ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` give the process count
  and this process's id; on clusters JAX detects (SLURM, TPU pods, ...) they
  may be left out. On CPU, collectives go through gloo.
  """
  if not (config.distributed or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  if jax.distributed.is_initialized():
    return
  # CPU all-reduces across processes need gloo; other backends ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  num = os.environ.get('JAX_NUM_PROCESSES')
  pid = os.environ.get('JAX_PROCESS_ID')
  jax.distributed.initialize(
    num_processes=int(num) if num else None,
    process_id=int(pid) if pid else None,
  )


# What XLA's collectives and JAX's coordination service say when a peer
# process is gone (killed, or its host lost).
_LOST_PEER = (
  'Connection reset by peer',
  'Connection closed by peer',
  'Broken pipe',
  'Gloo',
  'coordination service',
  'heartbeat',
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
)


def lost_peer(error: Exception, workdir: str) -> str | None:
  """The one line for a multi-process run that lost a process, else None."""
  if jax.process_count() < 2 or not any(s in str(error) for s in _LOST_PEER):
    return None
  me, n = jax.process_index(), jax.process_count()
  others = [str(i) for i in range(n) if i != me]
  who = f'process {others[0]}' if n == 2 else f'one of processes {others}'
  detail = str(error).strip().splitlines()[0][:120]
  return (
    f'lost contact with {who} of this {n}-process run ({detail}); restart '
    f'it, then run the same command on every host to resume from the last '
    f'checkpoint in {workdir}'
  )


class Steps(NamedTuple):
  """The compiled pieces of one parallelism strategy, used by the loop.

  train(state, batch, rng) -> (state, metrics); evaluate(state, batch) ->
  global sums; put_batch(local numpy batch) -> device batch; place(state)
  puts a single state on the devices; unplace(state) gives one copy back
  (for checkpoints and hashing).
  """

  train: Callable
  evaluate: Callable
  put_batch: Callable
  place: Callable
  unplace: Callable
  mesh: Mesh | None = None  # the jit path's mesh; None under pmap


def jit_steps(train_step, eval_step, mesh: Mesh) -> Steps:
  """``jax.jit`` with NamedSharding: replicated state, batch split on mesh."""
  repl, sharded = replicated(mesh), batch_sharding(mesh)
  train = fastpath.jit(
    train_step,
    in_shardings=(repl, sharded, repl),
    out_shardings=(repl, repl),
    donate_argnums=0,
  )
  evaluate = fastpath.jit(
    eval_step, in_shardings=(repl, sharded), out_shardings=repl
  )
  return Steps(
    train,
    evaluate,
    lambda b: put_batch(b, mesh),
    lambda s: jax.device_put(s, repl),
    lambda s: s,
    mesh,
  )


def pmap_steps(train_step, eval_step) -> Steps:
  """``jax.pmap`` over the local devices, gradients averaged by pmean.

  ``train_step`` must take ``axis_name`` (jaxcls.training.run.train_step does).
  ``jax.pmap`` takes no compiler options, so on XLA:CPU this path keeps
  XLA's default convolution library (jaxcls.accel.compiler_options). The
  state is replicated with a leading device axis; metrics come back summed
  over all devices (psum) and are read from device 0.
  """
  n = jax.local_device_count()
  axis = 'batch'
  p_train = jax.pmap(
    functools.partial(train_step, axis_name=axis),
    axis_name=axis,
    in_axes=(0, 0, None),
    donate_argnums=0,
  )
  p_eval = jax.pmap(
    lambda s, b: jax.lax.psum(eval_step(s, b), axis), axis_name=axis
  )

  def train(state, batch, rng):
    state, metrics = p_train(state, batch, rng)
    return state, jax.tree_util.tree_map(lambda x: x[0], metrics)

  def evaluate(state, batch):
    return jax.tree_util.tree_map(lambda x: x[0], p_eval(state, batch))

  def split(batch):
    return {
      k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()
    }

  return Steps(
    train, evaluate, split, flax.jax_utils.replicate, flax.jax_utils.unreplicate
  )
