"""Tests for populations (jaxcls.sweep.population), sweeps (jaxcls.sweep), the
sweep experiment and its benchmark."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import sweep_speed
from experiments import fashion_mnist
from experiments import sweep as sweep_exp
from jaxcls import config as config_lib
from jaxcls import data, models, optim, sweep
from jaxcls.ops import fastpath
from jaxcls.sweep import population
from jaxcls.training import run as train

pytestmark = pytest.mark.slow  # Trains models: the full tier.


def _learnable_split(n: int, seed: int) -> data.Split:
  """Images whose brightness encodes the label, plus noise: learnable fast."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = labels[:, None, None, None] * 22 + rng.integers(
    0, 40, (n, 28, 28, 1)
  )
  return data.Split(images.astype(np.uint8), labels)


def _tiny_data(n: int = 256) -> data.Data:
  return data.Data(
    [_learnable_split(n, 0)],
    _learnable_split(128, 1),
    _learnable_split(128, 2),
    data.get_spec('fashion_mnist'),
    source='synthetic',
  )


def _tiny_config(**overrides):
  c = sweep_exp.get_config()
  c.batch_size, c.eval_batch_size, c.num_epochs = 32, 64, 2
  c.dropout_rate = 0.2  # Exercises the per-member dropout keys.
  for key, value in overrides.items():
    c[key] = value
  return c


def _quiet(*args):
  del args


def _single_run(config, ds):
  """The reference: a plain loop of train.train_step on host batches."""
  steps = len(ds.train) // config.batch_size
  model = models.create_model(config, ds.spec.num_classes)
  tx = optim.create_optimizer(config, steps)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(init_rng, model, tx, ds.spec.image_shape)
  step_fn = fastpath.jit(train.train_step)  # As the loop compiles it.
  losses = []
  for epoch in range(config.num_epochs):
    order = data.epoch_permutation(config.seed, epoch, len(ds.train))
    total = 0.0
    for index in range(steps):
      state, metrics = step_fn(
        state,
        data.train_batch(ds.train, order, index, config.batch_size),
        train_rng,
      )
      total += float(metrics['loss'])
    losses.append(total / (steps * config.batch_size))
  return state, np.array(losses)


def _max_diff(a, b) -> float:
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


@pytest.fixture(scope='module')
def population_run():
  """Mode 'auto' (here: 'loop'). Members 0 and 1 identical (the config's own
  lr), member 2 at 10x lr. Also returns the compiled steps, for reuse."""
  config = sweep.member_config(_tiny_config(), {})
  ds = _tiny_data()
  values = [{}, {}, {'learning_rate': 10 * config.learning_rate}]
  steps = population.make_population_steps(config, ds)
  result = population.train_population(
    config, values, ds, log=_quiet, steps=steps
  )
  return config, ds, values, result, steps


@pytest.fixture(scope='module')
def single_run(population_run):
  config, ds, *_ = population_run
  return _single_run(config, ds)


def test_auto_mode_is_loop_on_cpu_and_vmap_elsewhere():
  assert population.resolve_mode('auto', 'cpu') == 'loop'
  assert population.resolve_mode('auto', 'gpu') == 'vmap'
  assert population.resolve_mode('auto', 'tpu') == 'vmap'
  assert population.resolve_mode('unrolled', 'gpu') == 'unrolled'
  assert population.resolve_mode('auto') == (
    'loop' if jax.default_backend() == 'cpu' else 'vmap'
  )
  with pytest.raises(ValueError, match='population_mode'):
    population.resolve_mode('grouped')


def test_identical_members_give_identical_results(population_run):
  result = population_run[3]
  assert (
    _max_diff(result.final_states[0].params, result.final_states[1].params)
    == 0.0
  )
  np.testing.assert_array_equal(result.train_loss[0], result.train_loss[1])
  np.testing.assert_array_equal(result.val_accuracy[0], result.val_accuracy[1])


def test_member_equals_the_single_run(population_run, single_run):
  result = population_run[3]
  state, losses = single_run
  member = result.final_states[0]
  assert int(member.step) == int(state.step)
  # The injected learning rate multiplies in another order than optax's
  # baked-in one: equal up to float rounding, which Adam's normalisation can
  # lift to ~1e-4 on near-zero gradients.
  assert _max_diff(member.params, state.params) < 2e-3
  np.testing.assert_allclose(result.train_loss[0], losses, rtol=1e-4)


def test_members_with_different_learning_rates_diverge(
  population_run, single_run
):
  result = population_run[3]
  state, _ = single_run
  same = _max_diff(result.final_states[0].params, state.params)
  other = _max_diff(
    result.final_states[0].params, result.final_states[2].params
  )
  assert other > 10 * max(same, 1e-3)
  assert not np.array_equal(result.train_loss[0], result.train_loss[2])


def test_best_params_are_the_best_epoch_snapshot(population_run):
  result = population_run[3]
  for row in range(3):
    accs = result.val_accuracy[row]
    assert result.best_val_accuracy[row] == np.nanmax(accs)
    assert result.best_epoch[row] == int(np.nanargmax(accs)) + 1
  # Where the last epoch was the best, the snapshot is the final state.
  for row in [r for r in range(3) if result.best_epoch[r] == 2]:
    assert (
      _max_diff(result.best_states[row].params, result.final_states[row].params)
      == 0
    )
    assert int(result.best_states[row].step) == result.best_step[row]


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['vmap', 'unrolled'])
def test_modes_agree(population_run, mode):
  config, ds, values, loop, _ = population_run
  result = population.train_population(
    config, values, ds, mode=mode, log=_quiet
  )
  for row in range(3):
    assert (
      _max_diff(result.final_states[row].params, loop.final_states[row].params)
      < 1e-3
    )
    assert (
      _max_diff(result.best_states[row].params, loop.best_states[row].params)
      < 1e-3
    )
  np.testing.assert_allclose(result.train_loss, loop.train_loss, rtol=1e-4)
  np.testing.assert_allclose(
    result.val_accuracy, loop.val_accuracy, atol=1 / 64
  )  # at most one example flips
  np.testing.assert_array_equal(result.best_epoch, loop.best_epoch)


@pytest.mark.parametrize(
  'mode', ['loop', pytest.param('vmap', marks=pytest.mark.slow)]
)
def test_early_stop_and_divergence_freeze_members(population_run, mode):
  # lr = 0: the parameters, so the validation accuracy, never change, so with
  # patience 1 the member stops after epoch 2; lr = inf: the loss is NaN
  # within the first epoch, the member is frozen as diverged; the learning
  # member goes on. Same shapes as the fixture: its compiled steps serve.
  config, ds, *_, steps = population_run
  config = sweep.member_config(_tiny_config(num_epochs=3, patience=1), {})
  lines = []
  result = population.train_population(
    config,
    [
      {'learning_rate': 0.0},
      {'learning_rate': 3e-3},
      {'learning_rate': float('inf')},
    ],
    ds,
    mode=mode,
    log=lambda *a: lines.append(' '.join(map(str, a))),
    steps=steps if mode == steps.mode else None,
  )
  steps = len(ds.train) // config.batch_size
  assert result.epochs_trained.tolist() == [2, 3, 1]
  assert np.isnan(result.val_accuracy[0, 2])
  assert [int(s.step) for s in result.final_states] == [
    2 * steps,
    3 * steps,
    steps,
  ]
  assert result.best_epoch[0] == 1
  assert result.diverged.tolist() == [False, False, True]
  assert result.best_epoch[2] == 0 and np.isnan(result.train_loss[2, 0])
  assert any(
    'member 2: the training loss became non-finite' in line for line in lines
  )
  assert np.all(np.isfinite(result.train_loss[1]))


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
  c = _tiny_config(
    sweep_learning_rate='1e-3, 3e-3',
    sweep_weight_decay='',
    sweep_dropout_rate='0,0.5',
  )
  assert sweep.swept_values(c) == {
    'learning_rate': [1e-3, 3e-3],
    'dropout_rate': [0.0, 0.5],
  }
  with pytest.raises(ValueError, match='expected comma-separated float'):
    sweep.swept_values(_tiny_config(sweep_learning_rate='1e-3,fast'))
  bad = _tiny_config()
  bad.sweep_train_examples = '100,200'
  with pytest.raises(ValueError, match='cannot be swept'):
    sweep.swept_values(bad)


def test_member_config_matches_a_plain_run_and_groups_by_shape():
  values = {'learning_rate': 3e-3, 'weight_decay': 0.1}
  member = sweep.member_config(sweep_exp.get_config(), values)
  assert 'population_mode' not in member and 'sweep_seed' not in member
  plain = fashion_mnist.get_config()
  for flag in sweep.eval_overrides(member, fashion_mnist.get_config()):
    key, value = flag[len('--config.') :].split('=', 1)
    plain[key] = type(plain[key])(value) if plain[key] is not None else value
  assert config_lib.fingerprint(member) == config_lib.fingerprint(plain)
  other_lr = sweep.member_config(sweep_exp.get_config(), {'learning_rate': 1.0})
  other_dropout = sweep.member_config(
    sweep_exp.get_config(), {'dropout_rate': 0.5}
  )
  assert sweep.group_key(member) == sweep.group_key(other_lr)
  assert sweep.group_key(member) != sweep.group_key(other_dropout)


def test_run_sweep_selects_argmax_and_saves_a_normal_run(tmp_path, monkeypatch):
  ds = _tiny_data()
  monkeypatch.setattr(data, 'load', lambda *a, **k: ds)
  config = _tiny_config(
    num_epochs=1,
    sweep_learning_rate='1e-4,3e-3',
    sweep_weight_decay='0,0.1',
    population_chunk=3,
    dropout_rate=0.0,
  )  # 2 chunks of 3, one compilation
  workdir = str(tmp_path)
  summary = sweep_exp.main(config, workdir, log=_quiet)
  with open(os.path.join(workdir, 'sweep.json')) as f:
    saved = json.load(f)
  accs = [m['best_val_accuracy'] for m in saved['members']]
  assert len(accs) == 4  # the padding copy in the second chunk is dropped
  assert saved['best_member'] == int(np.argmax(accs))
  assert saved['chunk_sizes'] == [3] and saved['populations'] == 2
  assert saved['population_mode'] == population.resolve_mode('auto')
  assert os.path.getsize(os.path.join(workdir, 'sweep.png')) > 0
  # The best member is a normal run: --eval_only restores and re-scores it.
  member = sweep.member_config(
    config, saved['members'][summary['best_member']]['values']
  )
  results = train.train_and_evaluate(member, workdir, eval_only=True)
  assert results['test_accuracy'] == pytest.approx(
    summary['best']['test_accuracy'], abs=1e-6
  )
  assert results['best_val_accuracy'] == pytest.approx(max(accs))
  assert results['config_fingerprint'] == config_lib.fingerprint(member)
  assert '--eval_only' in summary['best']['eval_command']


def test_sweep_cli_refuses_an_unknown_key_in_one_line():
  import subprocess
  import sys

  done = subprocess.run(
    [sys.executable, '-m', 'experiments.sweep', '--config.population_mod=vmap'],
    capture_output=True,
    text=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    timeout=120,
  )
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [done.stderr.strip()]
  assert "did you mean 'population_mode'" in done.stderr


def test_auto_chunk_size_fits_the_free_memory(monkeypatch):
  config = sweep.member_config(_tiny_config(), {})
  ds = _tiny_data()
  loop = sweep.member_bytes(config, ds, 'loop')
  params = sum(
    x.size
    for x in jax.tree_util.tree_leaves(
      jax.eval_shape(
        lambda: train.create_train_state(
          jax.random.key(0),
          models.create_model(config, 10),
          optim.create_optimizer(config, 1),
          (28, 28, 1),
        )
      ).params
    )
  )
  assert loop >= 4 * 4 * params  # params + 2 Adam moments, float32, x4
  monkeypatch.setattr(sweep.memory, 'member_bytes', lambda *a: 1000)
  monkeypatch.setattr(sweep.memory, 'free_device_bytes', lambda: 6000 + 1)
  assert sweep.auto_chunk_size(config, ds, members=8) == 3  # half of 6
  assert sweep.auto_chunk_size(config, ds, members=2) == 2
  monkeypatch.setattr(sweep.memory, 'free_device_bytes', lambda: 1000)
  with pytest.raises(ValueError, match='does not fit'):
    sweep.auto_chunk_size(config, ds, members=8)


@pytest.mark.slow
def test_vmap_member_bytes_is_the_compiled_estimate():
  config = sweep.member_config(_tiny_config(), {})
  ds = _tiny_data()
  assert (
    sweep.member_bytes(config, ds, 'vmap')
    > sweep.member_bytes(config, ds, 'loop') // 4
  )


@pytest.mark.slow
def test_benchmark_writes_the_four_numbers(tmp_path, monkeypatch):
  ds = _tiny_data(n=64)  # 2 steps of 32
  monkeypatch.setattr(data, 'load', lambda *a, **k: ds)
  out = tmp_path / 'speed.json'
  sweep_speed.main(
    [
      '--members',
      '2',
      '--epochs',
      '1',
      '--steps',
      '2',
      '--batch_size',
      '32',
      '--json',
      str(out),
    ]
  )
  r = json.loads(out.read_text())
  for side in ('population', 'sequential'):
    assert 0 < r[f'{side}_train_seconds'] <= r[f'{side}_wall_seconds']
    assert r[side]['compile_seconds'] > 0
  assert r['mode'] == population.resolve_mode('auto') and r['members'] == 2
  assert r['train_ratio'] == pytest.approx(
    r['population_train_seconds'] / r['sequential_train_seconds']
  )
  # Same members, same batches: the same validation accuracies both ways.
  np.testing.assert_allclose(
    r['population']['final_val_accuracy'],
    r['sequential']['final_val_accuracy'],
    atol=1 / 128,
  )
