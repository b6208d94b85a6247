"""Feeding the training loop: host batches, or data kept on the device.

* **device** (``config.device_data``): the training split is copied to the
  device(s) once, as uint8, replicated over the mesh; a compiled call runs
  ``n`` steps, each gathering its batch there from int32 row indices. One
  dispatch per ``n`` steps and no image copies: what counts on accelerators,
  where a step of these small models takes less time than its launch.
* **host**: each step's batch is gathered from host numpy and put on the
  device(s), one step per call; for ``pmap``, and for processes that each
  hold only their own part of the data.

Every feed and every ``n`` (per backend: :func:`default_steps_per_call`)
trains the same function of (seed, step): each step is ``train_step`` with
key ``fold_in(rng, step)`` and its batch from the ``(seed, epoch)`` order.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcls import data
from jaxcls.ops import fastpath

# backend -> steps per compiled call on the device feed (benchmarks/NOTES.md):
# one on XLA:CPU, where neither a scanned loop nor unrolled steps are faster.
_STEPS_PER_CALL = {'cpu': 1, 'gpu': 32, 'tpu': 32}


def default_steps_per_call(backend: str | None = None) -> int:
  """The measured-fastest steps per call for ``backend`` (default: JAX's)."""
  return _STEPS_PER_CALL.get(backend or jax.default_backend(), 1)


def use_device_data(config) -> bool:
  """Whether ``config`` trains from device-resident data.

  'auto' means yes for a single process on the jit path, for images; the
  data must then fit on each device next to the model. Sequences take the
  host feed, whose batches have their own padded lengths.
  """
  if data.is_sequence(config.dataset):
    return False
  if config.device_data == 'auto':
    return config.parallel == 'jit' and jax.process_count() == 1
  return config.device_data == 'on'


def steps_per_call(config) -> int:
  """``config.steps_per_call``, or the backend's default for 0, on the
  device feed; 1 on the host feed, which runs one step per call."""
  if not use_device_data(config):
    return 1
  return config.steps_per_call or default_steps_per_call()


def epoch_rows(
  seed: int,
  epoch: int,
  shards: list[data.Split],
  shard_ids: tuple[int, ...],
  per_shard: int,
) -> np.ndarray:
  """``(steps, local batch)`` int32 rows of ``epoch`` into the concatenated
  ``shards`` (this process's).

  Batch ``i`` takes ``per_shard`` examples from each shard, in that shard's
  order for the epoch (:func:`data.epoch_permutation`, a function of (seed,
  epoch, shard) only), shards in sequence. The last partial batch is dropped.
  """
  steps = len(shards[0]) // per_shard
  offset, parts = 0, []
  for split, shard in zip(shards, shard_ids):
    order = data.epoch_permutation(seed, epoch, len(split), shard)
    parts.append(offset + order[: steps * per_shard].reshape(steps, per_shard))
    offset += len(split)
  return np.concatenate(parts, axis=1).astype(np.int32)


def sequence_rows(seed: int, epoch: int, split: data.Split, batch_size: int):
  """:func:`epoch_rows` for one shard of sequences: the (seed, epoch) order,
  windows of it sorted by length, the batches shuffled (see data.buckets)."""
  order = data.epoch_permutation(seed, epoch, len(split))
  rng = np.random.default_rng([seed, epoch, 0, 1])
  return data.buckets.sorted_batches(order, split.lengths, batch_size, rng)


def data_rows(seed: int, epoch: int, ds: data.Data, shard_ids, per_shard):
  """The epoch's batch rows of ``ds``: :func:`sequence_rows` for one shard
  of sequences with several buckets, :func:`epoch_rows` otherwise."""
  if ds.buckets and len(ds.buckets) > 1:
    return sequence_rows(seed, epoch, ds.train, per_shard)
  return epoch_rows(seed, epoch, ds.train_shards, shard_ids, per_shard)


def multi_step(step_fn, n: int):
  """``(state, data, rows, rng) -> (state, metrics)`` over ``n`` steps.

  ``rows`` is ``(n, batch)``; ``metrics`` hold one entry per step (shape
  ``(n,)``). The steps are unrolled, and an optimization barrier between
  them keeps XLA from fusing one step's update into the next step's
  forward pass, so the arithmetic, and the result, is that of ``n``
  separate calls.
  """

  def run(state, train_data, rows, rng):
    per_step = []
    for i in range(n):
      batch = {k: jnp.take(v, rows[i], axis=0) for k, v in train_data.items()}
      state, metrics = step_fn(state, batch, rng)
      state = jax.lax.optimization_barrier(state)
      per_step.append(metrics)
    return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *per_step)

  return run


class DeviceFeed:
  """The training split on the device and compiled ``n``-step calls."""

  def __init__(self, step_fn, train_split: data.Split, mesh: Mesh):
    repl = NamedSharding(mesh, P())
    self._rows_sharding = NamedSharding(mesh, P(None, 'data'))
    self._data = jax.device_put(
      {
        'image': np.asarray(train_split.images, np.uint8),
        'label': np.asarray(train_split.labels, np.int32),
      },
      repl,
    )
    self._step_fn, self._repl = step_fn, repl
    self._compiled = {}
    self.input_seconds = 0.0  # host time spent feeding (here: the rows)

  def compile(self, state, rng, n: int, batch_size: int):
    """Compiles (once) the call of ``n`` steps; returns it."""
    if n not in self._compiled:
      fn = fastpath.jit(
        multi_step(self._step_fn, n),
        in_shardings=(self._repl, self._repl, self._rows_sharding, self._repl),
        out_shardings=(self._repl, self._repl),
        donate_argnums=0,
      )
      rows = jax.ShapeDtypeStruct(
        (n, batch_size), jnp.int32, sharding=self._rows_sharding
      )
      self._compiled[n] = fn.lower(state, self._data, rows, rng).compile()
    return self._compiled[n]

  def run(self, state, rows: np.ndarray, rng):
    """Runs ``len(rows)`` steps; ``rows`` is ``(n, batch)`` host int32."""
    fn = self.compile(state, rng, *rows.shape)
    t = time.perf_counter()
    rows = jax.device_put(rows, self._rows_sharding)
    self.input_seconds += time.perf_counter() - t
    return fn(state, self._data, rows, rng)


class HostFeed:
  """One step per call, each batch gathered on the host (any parallelism).

  ``train_split`` is this process's shards concatenated, which the rows of
  :func:`epoch_rows` index. Metrics come back as scalars (one step). For
  sequences, a batch is cut to the bucket of its longest (``buckets``), and
  there is one compiled step per bucket.
  """

  def __init__(self, steps, train_split: data.Split, buckets=()):
    self._steps, self._split = steps, train_split
    self._buckets = tuple(buckets) if train_split.lengths is not None else ()
    self._train, self._compiled = steps.train, {}
    self.input_seconds = 0.0  # host time spent gathering and copying batches

  def compile(self, state, rng, n: int, batch_size: int):
    """Compiles the step for every padded length ahead of time."""
    del n
    if hasattr(self._train, 'lower'):  # jit; pmap compiles on first call.
      for width in self._buckets or (None,):
        rows = np.zeros((1, batch_size), np.int32)
        batch = self._batch(rows, width)
        self._compiled[width] = self._train.lower(state, batch, rng).compile()
    return self._compiled

  @property
  def compiled_programs(self) -> int:
    return len(self._compiled)

  def _width(self, rows) -> int | None:
    if not self._buckets:
      return None
    longest = int(self._split.lengths[rows[0]].max())
    return data.buckets.bucket_for(longest, self._buckets)

  def _batch(self, rows, width):
    r = rows[0]
    batch = {
      'image': self._split.images[r, :width],
      'label': self._split.labels[r],
    }
    if self._split.lengths is not None:
      batch['length'] = self._split.lengths[r]
    return self._steps.put_batch(batch)

  def run(self, state, rows: np.ndarray, rng):
    t = time.perf_counter()
    width = self._width(rows)
    batch = self._batch(rows, width)
    self.input_seconds += time.perf_counter() - t
    return self._compiled.get(width, self._train)(state, batch, rng)


__all__ = [
  'default_steps_per_call',
  'use_device_data',
  'steps_per_call',
  'epoch_rows',
  'sequence_rows',
  'data_rows',
  'multi_step',
  'DeviceFeed',
  'HostFeed',
]
