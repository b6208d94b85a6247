"""The fast training path: data on the device, k steps per compiled call.

Feeding each step from host numpy costs a host gather, a host-to-device copy
and a Python dispatch per step. Here the whole (small) training split lives on
the device as uint8, an epoch's order is one int32 array of row indices, and
one compiled call runs ``k`` optimizer steps, gathering each batch on the
device. The state is donated, so parameters are updated in place, and metrics
come back as sums over the ``k`` steps (one host sync per epoch, not per step).

``k`` and how the k steps are compiled are chosen per backend
(:func:`steps_per_call`): on XLA:CPU a ``lax.scan`` (a while loop) makes the
CNN's convolution gradients ~5x slower, and unrolling k > 1 steps only adds
compile time, so the CPU default is one step per call. On a GPU, the launch
overhead per call dominates a step of these small models, so many steps run
in one scanned call (the trick behind the fast CIFAR-10 training records).
benchmarks/NOTES.md has the measurements.

Each step is ``train.train_step`` itself, with its key ``fold_in(rng, step)``,
so k steps per call give the same parameters as k separate calls.
"""

import jax
import jax.numpy as jnp
import numpy as np

# backend -> (steps per compiled call, scan the steps (True) or unroll them).
_STEPS_PER_CALL = {'cpu': (1, False), 'gpu': (50, True), 'tpu': (50, True)}


def steps_per_call(backend: str | None = None) -> tuple[int, bool]:
  """``(k, scan)`` for ``backend`` (default: JAX's default backend)."""
  return _STEPS_PER_CALL.get(backend or jax.default_backend(), (1, False))


def put_split(images: np.ndarray, labels: np.ndarray, device=None) -> dict:
  """A split's uint8 images and int32 labels, copied to the device once."""
  return {'image': jax.device_put(np.asarray(images, np.uint8), device),
          'label': jax.device_put(np.asarray(labels, np.int32), device)}


def epoch_rows(order: np.ndarray, batch_size: int, k: int) -> np.ndarray:
  """An epoch's row order as ``(calls, k, batch_size)`` int32 indices.

  The last partial batch and the steps that do not fill a whole call are
  dropped (the plain loop drops the partial batch too).
  """
  steps = len(order) // batch_size // k * k
  if steps == 0:
    raise ValueError(f'{len(order)} examples do not fill {k} steps of batch '
                     f'{batch_size}; lower the batch size or steps per call')
  return np.asarray(order[:steps * batch_size], np.int32).reshape(
      -1, k, batch_size)


def _gather(data: dict, rows: jax.Array) -> dict:
  return {'image': jnp.take(data['image'], rows, axis=0),
          'label': jnp.take(data['label'], rows, axis=0)}


def make_multi_step(step_fn, k: int, scan: bool = False):
  """``(state, data, rows, rng) -> (state, metric sums)`` over ``k`` steps.

  ``step_fn`` is ``(state, batch, rng) -> (state, metrics)`` (e.g.
  ``functools.partial(train.train_step, augment=...)``); ``data`` is a
  :func:`put_split` dict on the device and ``rows`` a ``(k, B)`` slice of
  :func:`epoch_rows`. ``scan`` compiles the steps as one ``lax.scan`` (small
  program, fast compile, a while loop); otherwise they are unrolled.
  """

  def multi_step(state, data, rows, rng):
    if scan:
      def body(state, step_rows):
        return step_fn(state, _gather(data, step_rows), rng)
      state, metrics = jax.lax.scan(body, state, rows)
      return state, jax.tree_util.tree_map(lambda m: m.sum(0), metrics)
    totals = None
    for i in range(k):
      state, metrics = step_fn(state, _gather(data, rows[i]), rng)
      totals = metrics if totals is None else jax.tree_util.tree_map(
          jnp.add, totals, metrics)
    return state, totals

  return multi_step


def jit_multi_step(step_fn, k: int, scan: bool = False):
  """:func:`make_multi_step`, jitted with the state donated."""
  return jax.jit(make_multi_step(step_fn, k, scan), donate_argnums=0)


def train_epoch(multi_step, state, data: dict, rows: np.ndarray, rng):
  """Runs every call of an epoch; returns ``(state, metric sums)``.

  The sums stay on the device; ``jax.device_get`` them once at the end.
  """
  totals = None
  for call_rows in rows:
    state, metrics = multi_step(state, data, call_rows, rng)
    totals = metrics if totals is None else jax.tree_util.tree_map(
        jnp.add, totals, metrics)
  return state, totals


def enable_compilation_cache(path: str) -> None:
  """Persists compiled programs in ``path``, so a rerun skips compilation."""
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


__all__ = ['steps_per_call', 'put_split', 'epoch_rows', 'make_multi_step',
           'jit_multi_step', 'train_epoch', 'enable_compilation_cache']
