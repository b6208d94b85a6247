"""The fast path (jaxcls.fast) against the plain per-step loop, and pool_2x2."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import config as config_lib
from jaxcls import data, fast, models, optim, train


def make_state(dropout_rate=0.1):
  c = config_lib.get_config()
  c.dropout_rate = dropout_rate  # Dropout: the per-step keys must match too.
  model = models.create_model(c, 10)
  tx = optim.create_optimizer(c, steps_per_epoch=100)
  return train.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))


def host_split(n=320, seed=0):
  rng = np.random.default_rng(seed)
  return data.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int32))


def plain_loop(state, split, order, batch_size, steps, rng):
  """The reference: one jitted train_step per host batch, as train.py does."""
  step = jax.jit(train.train_step)
  totals = []
  for i in range(steps):
    state, metrics = step(state, data.train_batch(split, order, i, batch_size),
                          rng)
    totals.append(jax.device_get(metrics))
  return state, {k: sum(m[k] for m in totals) for k in totals[0]}


@pytest.mark.parametrize('k,scan', [(1, False), (3, False), (3, True)])
def test_multi_step_matches_the_plain_loop(k, scan):
  split, rng = host_split(), jax.random.key(7)
  order = data.epoch_permutation(0, 0, len(split))
  rows = fast.epoch_rows(order, 32, k)
  steps = rows.size // 32
  expected, expected_sums = plain_loop(make_state(), split, order, 32, steps,
                                       rng)
  step_fn = functools.partial(train.train_step, augment=False)
  state, sums = fast.train_epoch(fast.jit_multi_step(step_fn, k, scan),
                                 make_state(), fast.put_split(split.images,
                                                              split.labels),
                                 rows, rng)
  assert int(state.step) == int(expected.step) == steps
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
      jax.device_get(state.params), jax.device_get(expected.params))
  sums = jax.device_get(sums)
  assert sums['count'] == expected_sums['count'] == steps * 32
  assert abs(int(sums['correct']) - int(expected_sums['correct'])) <= 1
  np.testing.assert_allclose(sums['loss'], expected_sums['loss'], rtol=1e-4)


def test_epoch_rows_drops_what_does_not_fill_a_call():
  rows = fast.epoch_rows(np.arange(100), 8, 5)
  assert rows.shape == (2, 5, 8)
  np.testing.assert_array_equal(rows.reshape(-1), np.arange(80))
  with pytest.raises(ValueError, match='do not fill'):
    fast.epoch_rows(np.arange(10), 8, 2)


@pytest.mark.parametrize('shape', [(2, 28, 28, 3), (2, 7, 9, 2)])
def test_pool_2x2_matches_flax_pools(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_allclose(models.pool_2x2(x, jnp.max),
                             nn.max_pool(x, (2, 2), (2, 2)), rtol=1e-6)
  np.testing.assert_allclose(models.pool_2x2(x, jnp.mean),
                             nn.avg_pool(x, (2, 2), (2, 2)), atol=1e-6)


def test_max_pool_gradient_matches_flax():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))  # No ties.
  loss = lambda pool: lambda x: jnp.sum(pool(x) ** 2)
  np.testing.assert_allclose(
      jax.grad(loss(models.pool_2x2))(x),
      jax.grad(loss(lambda x: nn.max_pool(x, (2, 2), (2, 2))))(x), rtol=1e-6)


def test_steps_per_call_has_a_cpu_default():
  k, scan = fast.steps_per_call('cpu')
  assert k >= 1 and scan in (True, False)
