"""Evaluation over whole splits, and the hash that identifies parameters.

:func:`evaluate` scores every example of a split exactly once, whatever the
batch size; :func:`params_sha256` is the fingerprint of trained parameters
that results.json records, so two runs can be compared bit for bit.
"""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls import data
from jaxcls.training import parallel


def to_host(tree):
  """numpy copies of (replicated) arrays, also when other processes hold
  parts of them: each process reads its own first shard."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree_util.tree_map(get, tree)


def params_sha256(params) -> str:
  """sha256 over the parameters' bytes, in a fixed (path-sorted) order."""
  leaves = jax.tree_util.tree_flatten_with_path(to_host(params))[0]
  h = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def evaluate(
  eval_fn, state, split: data.Split, batch_size: int, put_batch, buckets=()
) -> dict:
  """Accuracy and mean loss over every example of ``split``, exactly once.

  Args:
    eval_fn: the compiled eval step, ``(state, batch) -> sums``.
    state: the (placed) train state to score.
    split: the examples to score.
    batch_size: the global evaluation batch size.
    put_batch: turns this process's numpy rows into the device batch
      ``eval_fn`` takes: a ``Mesh`` (rows sharded over it) or a function.
    buckets: sequences: the padded lengths of the batches (Data.buckets).

  Returns:
    ``{'accuracy', 'loss', 'count'}`` as Python numbers.
  """
  if isinstance(put_batch, jax.sharding.Mesh):
    put_batch = functools.partial(parallel.put_batch, mesh=put_batch)
  totals = None
  for batch in data.eval_batches(
    split, batch_size, jax.process_index(), jax.process_count(), buckets
  ):
    sums = eval_fn(state, put_batch(batch))
    totals = (
      sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    )
  totals = jax.device_get(totals)
  return {
    'accuracy': float(totals['correct'] / totals['count']),
    'loss': float(totals['loss'] / totals['count']),
    'count': int(totals['count']),
  }
