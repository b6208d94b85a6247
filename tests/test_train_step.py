"""The pure train and eval steps."""

import functools

import jax
import numpy as np
import optax
import pytest

from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.training import parallel
from jaxcls.training import run as train


def make_state(dropout_rate=0.0, shape=(28, 28, 1)):
  c = config_lib.get_config()
  c.dropout_rate = dropout_rate
  model = models.create_model(c, 10)
  tx = optim.create_optimizer(c, steps_per_epoch=100)
  return train.create_train_state(jax.random.key(0), model, tx, shape)


def fixed_batch(n=64, shape=(28, 28, 1), seed=0):
  rng = np.random.default_rng(seed)
  return {
    'image': rng.integers(0, 256, (n, *shape), dtype=np.uint8),
    'label': rng.integers(0, 10, n).astype(np.int32),
  }


def test_train_step_lowers_the_loss_on_a_fixed_batch():
  state, batch = make_state(), fixed_batch()
  step = jax.jit(train.train_step)
  rng = jax.random.key(1)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics['loss'] / metrics['count']))
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 30


def test_metrics_are_sums_matching_a_direct_computation():
  state, batch = make_state(), fixed_batch(32)
  # Jitted (one compile), not op by op: same values, a fraction of the time.
  logits = jax.jit(state.apply_fn)(
    {'params': state.params}, (batch['image'] / 255.0 - 0.5) / 0.5
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(
    logits, batch['label']
  ).sum()
  correct = (np.argmax(logits, -1) == batch['label']).sum()
  _, metrics = jax.jit(train.train_step)(state, batch, jax.random.key(0))
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  assert int(metrics['correct']) == correct and float(metrics['count']) == 32


def test_step_randomness_comes_from_rng_and_step():
  state, batch = make_state(dropout_rate=0.5), fixed_batch()
  step = jax.jit(functools.partial(train.train_step, augment=False))
  a, _ = step(state, batch, jax.random.key(1))
  b, _ = step(state, batch, jax.random.key(1))
  c, _ = step(state, batch, jax.random.key(2))
  d, _ = step(state.replace(step=5), batch, jax.random.key(1))
  leaf = lambda s: jax.tree_util.tree_leaves(s.params)[0]
  np.testing.assert_array_equal(leaf(a), leaf(b))  # same key, same step
  assert not np.allclose(leaf(a), leaf(c))  # another key
  assert not np.allclose(leaf(a), leaf(d))  # another step


def test_penalties_change_the_update():
  state, batch = make_state(), fixed_batch()
  plain, _ = jax.jit(train.train_step)(state, batch, jax.random.key(0))
  step_l2 = jax.jit(functools.partial(train.train_step, l2=1.0))
  l2, _ = step_l2(state, batch, jax.random.key(0))
  assert not np.allclose(
    jax.tree_util.tree_leaves(plain.params)[1],
    jax.tree_util.tree_leaves(l2.params)[1],
  )


def test_eval_step_counts_only_unmasked_examples():
  state, batch = make_state(), fixed_batch(10)
  eval_step = jax.jit(train.eval_step)
  full = eval_step(state, {k: v[:6] for k, v in batch.items()})
  mask = np.array([1] * 6 + [0] * 4, np.float32)
  masked = eval_step(state, {**batch, 'mask': mask})
  for k in full:
    np.testing.assert_allclose(masked[k], full[k], rtol=1e-5)
  assert float(masked['count']) == 6


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_augmented_step_runs_on_cifar_shapes_and_is_jittable():
  state = make_state(shape=(32, 32, 3))
  batch = fixed_batch(8, (32, 32, 3))
  step = jax.jit(functools.partial(train.train_step, augment=True))
  text = step.lower(state, batch, jax.random.key(0)).as_text()
  assert 'dynamic_slice' in text or 'gather' in text  # the random crop
  new_state, metrics = step(state, batch, jax.random.key(0))
  assert int(new_state.step) == 1 and np.isfinite(metrics['loss'])


def test_params_sha256_depends_on_values_only():
  state = make_state()
  h = train.params_sha256(state.params)
  assert h == train.params_sha256(jax.device_get(state.params))
  bumped = jax.tree_util.tree_map(lambda p: p + 1e-7, state.params)
  assert train.params_sha256(bumped) != h


def test_the_loops_eval_step_applies_the_configs_flip_tta():
  """``--config.flip_tta`` reaches the compiled evaluation the loop runs."""
  state, batch = make_state(), fixed_batch(16)
  config = config_lib.get_config()
  config.flip_tta = True
  steps = train.make_steps(
    config, parallel.make_mesh(jax.devices()[:1]), data.get_spec('mnist')
  )
  got = steps.evaluate(steps.place(state), steps.put_batch(batch))
  tta = jax.jit(functools.partial(train.eval_step, flip_tta=True))
  plain = jax.jit(train.eval_step)(state, batch)
  np.testing.assert_allclose(got['loss'], tta(state, batch)['loss'], rtol=1e-6)
  assert abs(float(got['loss']) - float(plain['loss'])) > 1e-4
