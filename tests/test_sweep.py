"""Tests for vmapped populations (jaxcls.sweep) and the sweep experiment."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import fashion_mnist, sweep as sweep_exp
from jaxcls import config as config_lib, data, models, optim, sweep, train


def _learnable_split(n: int, seed: int) -> data.Split:
  """Images whose brightness encodes the label, plus noise: learnable fast."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = labels[:, None, None, None] * 22 + rng.integers(
      0, 40, (n, 28, 28, 1))
  return data.Split(images.astype(np.uint8), labels)


def _tiny_data() -> data.Data:
  train_split = _learnable_split(256, 0)
  # data.Data holds either one train split or a list of train shards.
  if dataclasses.fields(data.Data)[0].name == 'train_shards':
    train_split = [train_split]
  return data.Data(train_split, _learnable_split(128, 1),
                   _learnable_split(128, 2), data.get_spec('fashion_mnist'),
                   source='synthetic')


def _tiny_config(**overrides):
  c = sweep_exp.get_config()
  c.batch_size, c.eval_batch_size, c.num_epochs = 32, 64, 2
  c.dropout_rate = 0.2  # Exercises the per-member dropout keys.
  for key, value in overrides.items():
    c[key] = value
  return c


def _single_run(config, ds):
  """The reference: a plain loop of train.train_step, as train.py runs it."""
  steps = len(ds.train) // config.batch_size
  model = models.create_model(config, ds.spec.num_classes)
  tx = optim.create_optimizer(config, steps)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(init_rng, model, tx, ds.spec.image_shape)
  step_fn = jax.jit(train.train_step)
  losses = []
  for epoch in range(config.num_epochs):
    order = data.epoch_permutation(config.seed, epoch, len(ds.train))
    total = 0.0
    for index in range(steps):
      state, metrics = step_fn(
          state, data.train_batch(ds.train, order, index, config.batch_size),
          train_rng)
      total += float(metrics['loss'])
    losses.append(total / (steps * config.batch_size))
  return state, np.array(losses)


def _max_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope='module')
def population():
  """Members 0 and 1 identical (the config's own lr), member 2 at 10x lr."""
  config = sweep.member_config(_tiny_config(), {})
  ds = _tiny_data()
  result = sweep.train_population(
      config, [{}, {}, {'learning_rate': 10 * config.learning_rate}], ds,
      log=lambda *a: None)
  return config, ds, result


def test_identical_members_give_identical_results(population):
  _, _, result = population
  params = result.final_state.params
  assert _max_diff(sweep.take_member(params, 0),
                   sweep.take_member(params, 1)) == 0.0
  np.testing.assert_array_equal(result.train_loss[0], result.train_loss[1])
  np.testing.assert_array_equal(result.val_accuracy[0], result.val_accuracy[1])


def test_member_equals_the_single_run(population):
  config, ds, result = population
  state, losses = _single_run(config, ds)
  member = sweep.take_member(result.final_state, 0)
  assert int(member.step) == int(state.step)
  # vmap batches the convolutions differently: equal up to float rounding,
  # which Adam's normalisation can lift to ~1e-4 on near-zero gradients.
  assert _max_diff(member.params, state.params) < 2e-3
  np.testing.assert_allclose(result.train_loss[0], losses, rtol=1e-4)


def test_members_with_different_learning_rates_diverge(population):
  config, ds, result = population
  state, _ = _single_run(config, ds)
  params = result.final_state.params
  same = _max_diff(sweep.take_member(params, 0), state.params)
  other = _max_diff(sweep.take_member(params, 0), sweep.take_member(params, 2))
  assert other > 10 * max(same, 1e-3)
  assert not np.array_equal(result.train_loss[0], result.train_loss[2])


def test_best_params_are_the_best_epoch_snapshot(population):
  _, _, result = population
  for row in range(3):
    accs = result.val_accuracy[row]
    assert result.best_val_accuracy[row] == np.nanmax(accs)
    assert result.best_epoch[row] == int(np.nanargmax(accs)) + 1
  # Where the last epoch was the best, the snapshot is the final state.
  final_best = [r for r in range(3) if result.best_epoch[r] == 2]
  for row in final_best:
    assert _max_diff(sweep.take_member(result.best_params, row),
                     sweep.take_member(result.final_state.params, row)) == 0


def test_early_stopping_freezes_a_member_that_stops_improving():
  # lr = 0: the validation accuracy never changes, so with patience 1 the
  # member stops after epoch 2 while the learning member goes on.
  config = sweep.member_config(_tiny_config(num_epochs=3, dropout_rate=0.0),
                               {})
  ds = _tiny_data()
  result = sweep.train_population(
      config, [{'learning_rate': 0.0}, {'learning_rate': 3e-3}], ds,
      patience=1, log=lambda *a: None)
  steps = len(ds.train) // config.batch_size
  assert result.epochs_trained[0] == 2
  assert np.isnan(result.val_accuracy[0, 2])
  assert int(result.final_state.step[0]) == 2 * steps  # frozen, not stepped
  assert result.best_epoch[0] == 1
  # The learning member improves every epoch on this easy data.
  assert result.epochs_trained[1] == 3
  assert int(result.final_state.step[1]) == 3 * steps


def test_grid_sampling_and_chunks():
  swept = {'learning_rate': [1e-3, 1e-2, 1e-1], 'weight_decay': [0.0, 0.1]}
  grid = sweep.member_grid(swept)
  assert len(grid) == 6 and len({tuple(sorted(g.items())) for g in grid}) == 6
  sample = sweep.member_grid(swept, samples=4, sample_seed=3)
  assert len(sample) == 4 and all(s in grid for s in sample)
  assert sample == sweep.member_grid(swept, samples=4, sample_seed=3)
  assert sweep.chunks([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4, 4]]
  assert sweep.chunks([0, 1, 2], 0) == [[0, 1, 2]]


def test_parsing_and_errors():
  c = _tiny_config(sweep_learning_rate='1e-3, 3e-3', sweep_weight_decay='',
                   sweep_dropout_rate='0,0.5')
  assert sweep.swept_values(c) == {'learning_rate': [1e-3, 3e-3],
                                   'dropout_rate': [0.0, 0.5]}
  with pytest.raises(ValueError, match='expected comma-separated float'):
    sweep.swept_values(_tiny_config(sweep_learning_rate='1e-3,fast'))
  bad = _tiny_config()
  bad.sweep_train_examples = '100,200'
  with pytest.raises(ValueError, match='cannot be swept'):
    sweep.swept_values(bad)


def test_member_config_matches_a_plain_run_and_groups_by_shape():
  values = {'learning_rate': 3e-3, 'weight_decay': 0.1}
  member = sweep.member_config(sweep_exp.get_config(), values)
  plain = fashion_mnist.get_config()
  for flag in sweep_exp.eval_overrides(member):
    key, value = flag[len('--config.'):].split('=', 1)
    plain[key] = type(plain[key])(value) if plain[key] is not None else value
  assert config_lib.fingerprint(member) == config_lib.fingerprint(plain)
  other_lr = sweep.member_config(sweep_exp.get_config(), {'learning_rate': 1.})
  other_dropout = sweep.member_config(sweep_exp.get_config(),
                                      {'dropout_rate': 0.5})
  assert sweep.group_key(member) == sweep.group_key(other_lr)
  assert sweep.group_key(member) != sweep.group_key(other_dropout)


def test_run_sweep_selects_argmax_and_saves_a_normal_run(tmp_path,
                                                         monkeypatch):
  ds = _tiny_data()
  monkeypatch.setattr(data, 'load', lambda *a, **k: ds)
  config = _tiny_config(num_epochs=1, sweep_learning_rate='1e-4,3e-3',
                        sweep_weight_decay='0,0.1', population_chunk=3,  # 2 chunks, 1 compile
                        dropout_rate=0.0)
  workdir = str(tmp_path)
  summary = sweep_exp.run_sweep(config, workdir, log=lambda *a: None)
  saved = json.load(open(os.path.join(workdir, 'sweep.json')))
  accs = [m['best_val_accuracy'] for m in saved['members']]
  assert len(accs) == 4  # the padding copy in the second chunk is dropped
  assert saved['best_member'] == int(np.argmax(accs))
  assert saved['chunk_sizes'] == [3] and saved['populations'] == 2
  assert os.path.getsize(os.path.join(workdir, 'sweep.png')) > 0
  # The best member is a normal run: --eval_only restores and re-scores it.
  member = sweep.member_config(config, saved['members'][summary['best_member']]
                               ['values'])
  results = train.train_and_evaluate(member, workdir, eval_only=True)
  assert results['test_accuracy'] == pytest.approx(
      summary['best']['test_accuracy'], abs=1e-6)
  assert results['best_val_accuracy'] == pytest.approx(max(accs))


def test_auto_chunk_size_fits_the_free_memory(monkeypatch):
  config = sweep.member_config(_tiny_config(), {})
  ds = _tiny_data()
  one = sweep.member_bytes(config, ds)
  assert one > 0
  monkeypatch.setattr(sweep, 'member_bytes', lambda *a: one)
  monkeypatch.setattr(sweep, 'free_device_bytes', lambda: 6 * one + 1)
  assert sweep.auto_chunk_size(config, ds, members=8) == 3  # half of 6
  assert sweep.auto_chunk_size(config, ds, members=2) == 2
  monkeypatch.setattr(sweep, 'free_device_bytes', lambda: one)
  with pytest.raises(ValueError, match='does not fit'):
    sweep.auto_chunk_size(config, ds, members=8)
