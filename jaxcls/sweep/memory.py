"""How many members of a population fit in memory at once.

A population larger than ``population_chunk`` runs in chunks of that size;
with ``population_chunk = 0``, ``auto_chunk_size`` picks as many members as
fit in half the free memory, from ``member_bytes``' estimate of one member.
"""

import functools
import os

import jax
import jax.numpy as jnp

from jaxcls import data, models
from jaxcls.ops import fastpath
from jaxcls.sweep import member_state, modes
from jaxcls.training import run as train


def free_device_bytes() -> int:
  """Memory the population may use: free accelerator memory, else free RAM.

  Returns:
    The first local device's byte limit less its bytes in use when it
    reports them, else the free physical memory of the host.
  """
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def _state_shapes(config, ds: data.Data):
  """Shapes of a one-member population's ``(states, keys)`` (vmapped)."""
  model = models.create_model(config, ds.spec.num_classes)
  init = jax.vmap(
    functools.partial(
      member_state.init_member,
      model=model,
      tx=member_state.population_optimizer(config, 1),
      image_shape=ds.spec.image_shape,
      input_dtype=member_state.input_dtype(ds.spec),
    )
  )
  return jax.eval_shape(
    init, jnp.zeros(1, jnp.int32), jnp.zeros(1), jnp.zeros(1)
  )


def _batch_shapes(config, ds: data.Data) -> dict:
  """A training batch's shapes: uint8 pixels, or sequences of the longest
  bucket (ids or features, as the spec says) with their lengths."""
  b = config.batch_size
  batch = {'label': jax.ShapeDtypeStruct((b,), jnp.int32)}
  dtype = ds.spec.input_dtype if ds.spec.is_sequence else jnp.uint8
  batch['image'] = jax.ShapeDtypeStruct((b, *ds.spec.image_shape), dtype)
  if ds.spec.is_sequence:
    batch['length'] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return batch


def member_bytes(config, ds: data.Data, mode: str = 'auto') -> int:
  """Memory one more member needs.

  In one jit ('vmap', 'unrolled'): XLA's estimate of a one-member vmapped
  step (arguments + temporaries + outputs), which over-counts (the batch is
  shared), so chunks sized from it are safe. In 'loop' the members share
  the one step's temporaries: four times a member's state.

  Args:
    config: the group's single-run config.
    ds: the data (its spec gives the shapes).
    mode: the population mode (``modes.resolve_mode`` resolves 'auto').

  Returns:
    The estimate in bytes.
  """
  states, keys = _state_shapes(config, ds)
  state_bytes = 4 * sum(
    x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(states)
  )
  if modes.resolve_mode(mode) == 'loop':
    return state_bytes
  step, _ = train.configured_steps(config, ds.spec)
  stats = (
    fastpath.jit(modes.vmapped(step))
    .lower(states, _batch_shapes(config, ds), (keys, jnp.ones(1, bool)))
    .compile()
    .memory_analysis()
  )
  if stats is None:  # Some backends do not report; count the state instead.
    return state_bytes
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
  )


def auto_chunk_size(
  config,
  ds: data.Data,
  members: int,
  mode: str = 'auto',
  memory_fraction: float = 0.5,
) -> int:
  """How many members fit in ``memory_fraction`` of the free memory.

  Args:
    config: the group's single-run config.
    ds: the data.
    members: the population's size, the most this returns.
    mode: the population mode.
    memory_fraction: the share of ``free_device_bytes()`` to fill.

  Returns:
    The chunk size, at least 1.

  Raises:
    ValueError: not even one member fits.
  """
  fit = int(
    memory_fraction * free_device_bytes() // member_bytes(config, ds, mode)
  )
  if fit < 1:
    raise ValueError(
      'one member does not fit in device memory; lower --config.batch_size'
    )
  return min(members, fit)
