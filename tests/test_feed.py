"""The feeds (jaxcls.training.feed) against the per-step loop; pool_2x2."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import BIT_EXACT
from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.ops import fastpath, kernels
from jaxcls.training import feed, guards, parallel
from jaxcls.training import run as train


def make_state(dropout_rate=0.1):
  c = config_lib.get_config()
  c.dropout_rate = dropout_rate  # Dropout: the per-step keys must match too.
  model = models.create_model(c, 10)
  tx = optim.create_optimizer(c, steps_per_epoch=100)
  return train.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))


def host_split(n=320, seed=0):
  rng = np.random.default_rng(seed)
  return data.Split(
    rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
    rng.integers(0, 10, n).astype(np.int32),
  )


def plain_loop(state, split, order, batch_size, steps, rng):
  """The reference: one jitted train_step per host batch, as train.py does."""
  step = fastpath.jit(train.train_step)  # As the loop compiles it.
  totals = []
  for i in range(steps):
    state, metrics = step(
      state, data.train_batch(split, order, i, batch_size), rng
    )
    totals.append(jax.device_get(metrics))
  return state, {k: sum(m[k] for m in totals) for k in totals[0]}


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@BIT_EXACT
@pytest.mark.parametrize('k', [1, pytest.param(3, marks=pytest.mark.slow)])
def test_device_feed_matches_the_plain_loop_bit_for_bit(k):
  split, rng = host_split(), jax.random.key(7)
  order = data.epoch_permutation(0, 0, len(split))
  steps = len(split) // 32 // k * k
  expected, expected_sums = plain_loop(
    make_state(), split, order, 32, steps, rng
  )
  step_fn = functools.partial(train.train_step, augment=False)
  device_feed = feed.DeviceFeed(
    step_fn, split, parallel.make_mesh(jax.devices()[:1])
  )
  rows = np.asarray(order[: steps * 32], np.int32).reshape(steps, 32)
  state, per_call = make_state(), []
  for i in range(0, steps, k):
    state, metrics = device_feed.run(state, rows[i : i + k], rng)
    per_call.append(metrics)
  assert int(state.step) == int(expected.step) == steps
  assert train.params_sha256(state.params) == train.params_sha256(
    expected.params
  )
  sums = {k: v.sum() for k, v in guards.per_step(per_call).items()}
  assert sums['count'] == expected_sums['count'] == steps * 32
  assert sums['correct'] == expected_sums['correct']
  assert sums['loss'] == pytest.approx(float(expected_sums['loss']), rel=1e-6)


def test_epoch_rows_match_the_host_batches_of_every_shard():
  rng = np.random.default_rng(0)
  shards = [
    data.Split(
      rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8),
      np.arange(n, dtype=np.int32) + 1000 * i,
    )
    for i, n in enumerate((40, 40))
  ]
  rows = feed.epoch_rows(3, 1, shards, (4, 5), per_shard=8)
  assert rows.shape == (5, 16)
  joined = data.Split(
    np.concatenate([s.images for s in shards]),
    np.concatenate([s.labels for s in shards]),
  )
  orders = [data.epoch_permutation(3, 1, 40, shard) for shard in (4, 5)]
  for i in range(5):
    expected = data.sharded_train_batch(shards, orders, i, 8)
    np.testing.assert_array_equal(joined.labels[rows[i]], expected['label'])


@BIT_EXACT
@pytest.mark.slow
def test_k_steps_per_call_and_both_feeds_train_the_same_bits(tmp_path):
  from conftest import tiny_config

  hashes = set()
  for name, overrides in [
    ('k1', dict(steps_per_call=1)),
    ('k4', dict(steps_per_call=4)),
    ('host', dict(device_data='off')),
  ]:
    # Every step option on, so a feed that dropped one (the host feed once
    # ignored smoothing, mixup, the EMA and the config's augmentation)
    # trains other bits or scores another test accuracy.
    config = tiny_config(
      num_epochs=2,
      train_examples=640,
      dropout_rate=0.3,
      checkpoint_every_steps=3,
      augment='crop_flip',
      crop_padding=2,
      label_smoothing=0.1,
      mixup_alpha=0.2,
      ema_decay=0.9,
      flip_tta=True,
      **overrides,
    )
    results = train.train_and_evaluate(config, str(tmp_path / name))
    hashes.add((results['params_sha256'], results['test_accuracy']))
  assert len(hashes) == 1


@pytest.mark.parametrize('shape', [(2, 28, 28, 3), (2, 7, 9, 2)])
def test_pool_2x2_matches_flax_pools(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_allclose(
    models.pool_2x2(x, jnp.max), nn.max_pool(x, (2, 2), (2, 2)), rtol=1e-6
  )
  np.testing.assert_allclose(
    models.pool_2x2(x, jnp.mean), nn.avg_pool(x, (2, 2), (2, 2)), atol=1e-6
  )


def test_max_pool_gradient_matches_flax():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))  # No ties.
  loss = lambda pool: lambda x: jnp.sum(pool(x) ** 2)
  np.testing.assert_allclose(
    jax.grad(loss(models.pool_2x2))(x),
    jax.grad(loss(lambda x: nn.max_pool(x, (2, 2), (2, 2))))(x),
    rtol=1e-6,
  )


def _reference_max_pool(x):
  """The plain reshape-and-max pooling whose autodiff the custom VJP keeps."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('shape', [(3, 8, 8, 4), (2, 7, 9, 2)])
def test_max_pool_2x2_splits_tied_gradients_as_autodiff_does(shape):
  # Rounded values: many 2-, 3- and 4-way ties, as in uniform backgrounds.
  x = jnp.round(jax.random.normal(jax.random.key(2), shape) * 2) / 2
  g = jax.random.normal(jax.random.key(3), _reference_max_pool(x).shape)
  np.testing.assert_array_equal(kernels.max_pool_2x2(x), _reference_max_pool(x))
  y, vjp = jax.vjp(kernels.max_pool_2x2, x)  # The custom forward rule.
  _, vjp_ref = jax.vjp(_reference_max_pool, x)
  np.testing.assert_array_equal(y, _reference_max_pool(x))
  (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
  assert dx.shape == x.shape
  b, h, w, c = shape
  windows = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  y = _reference_max_pool(x)[:, :, None, :, None, :]
  assert int(jnp.sum(jnp.sum(windows == y, axis=(2, 4)) > 1)) > 5  # ties
  # g * (1/3) and g / 3 may differ in the last bit; everything else is exact.
  np.testing.assert_allclose(dx, dx_ref, rtol=2e-7, atol=0)
  np.testing.assert_array_equal(dx == 0, dx_ref == 0)


def test_steps_per_call_defaults_per_backend():
  assert feed.default_steps_per_call('cpu') == 1
  assert feed.default_steps_per_call('gpu') > 1
