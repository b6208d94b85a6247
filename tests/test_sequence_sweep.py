"""Populations of sequence models (JapaneseVowels from sktime's wheel): every
member trains as its own single run would, on the same bucketed batches."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic_ids
from experiments import japanese_vowels, spam
from experiments import sweep as sweep_exp
from jaxcls import data, sweep
from jaxcls.sweep import population
from jaxcls.training import metrics
from jaxcls.training import run as train

WHEEL = os.environ.get(
  'JAXCLS_SKTIME_WHEEL',
  os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'data/downloads/sktime-1.2.0-py3-none-any.whl',
  ),
)

pytestmark = [
  pytest.mark.slow,  # Trains models: the full tier.
  pytest.mark.skipif(
    not os.path.isfile(WHEEL),
    reason='needs `pip download --no-deps sktime==1.2.0` (see .ci/run)',
  ),
]


def _sweep_config(data_dir, **overrides):
  """japanese_vowels' config, small, with the sweep experiment's fields and
  a grid of two learning rates (one population of 2)."""
  c = japanese_vowels.get_config()
  c.data_dir, c.manual_dir = data_dir, WHEEL
  c.hidden_size, c.embed_size, c.num_epochs, c.num_buckets = 16, 16, 2, 3
  fields = sweep_exp.get_config()
  for key in fields:
    if key.startswith(sweep.SWEEP_PREFIX) or key in sweep.SWEEP_CONTROL_FIELDS:
      c[key] = fields[key]
  c.sweep_learning_rate, c.sweep_weight_decay = '2e-3,1e-2', ''
  for key, value in overrides.items():
    c[key] = value
  return c


def _quiet(*args):
  del args


def _max_diff(a, b) -> float:
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def population_run(data_dir):
  """Mode 'auto' on the sweep's one group: its member configs, the data,
  the result and the compiled steps."""
  config = _sweep_config(data_dir)
  grid = sweep.member_grid(sweep.swept_values(config))
  configs = [sweep.member_config(config, v) for v in grid]
  assert len({sweep.group_key(c) for c in configs}) == 1
  ds = data.load_config(configs[0])
  steps = population.make_population_steps(configs[0], ds)
  result = population.train_population(
    configs[0], grid, ds, log=_quiet, steps=steps
  )
  return configs, ds, grid, result, steps


@pytest.fixture(scope='module')
def single_runs(population_run, tmp_path_factory):
  """Each member's config as a plain run: its results, final state (the
  latest checkpoint) and per-epoch records."""
  configs, ds, *_ = population_run
  runs = []
  for config in configs:
    workdir = str(tmp_path_factory.mktemp('run'))
    results = train.train_and_evaluate(config, workdir)
    state, _ = train.resume(train.setup(config, workdir, ds=ds))
    records = metrics.epoch_records(
      metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    )
    runs.append((results, state, records))
  return runs


def test_each_member_trains_as_its_single_run(population_run, single_runs):
  """The same steps on the same bucketed batches: the single run's params
  up to float rounding (the injected learning rate multiplies in another
  order), its losses, and its validation accuracy but for one example."""
  _, ds, _, result, _ = population_run
  for row, (results, state, records) in enumerate(single_runs):
    member = result.final_states[row]
    assert int(member.step) == results['steps'] == int(state.step)
    assert _max_diff(member.params, state.params) < 2e-3
    np.testing.assert_allclose(
      result.train_loss[row], [r['train_loss'] for r in records], rtol=1e-4
    )
    np.testing.assert_allclose(
      result.val_accuracy[row],
      [r['val_accuracy'] for r in records],
      atol=1.01 / len(ds.val),
    )
  same = _max_diff(result.final_states[0].params, single_runs[0][1].params)
  other = _max_diff(
    result.final_states[0].params, result.final_states[1].params
  )
  assert other > 10 * max(same, 1e-3)


def test_a_population_of_sequences_learns(population_run):
  """Above chance (1/9 speakers) on validation, every member."""
  result = population_run[3]
  assert np.all(result.best_val_accuracy > 2 / 9)
  assert np.all(np.isfinite(result.train_loss))
  assert not result.diverged.any()


@pytest.mark.parametrize('mode', ['loop', 'vmap', 'unrolled'])
def test_modes_agree_on_sequences(population_run, mode):
  """Every mode, here in calls of 4 steps (the last of an epoch shorter),
  trains the members of mode 'auto' (one step per call on XLA:CPU)."""
  configs, ds, grid, auto, steps = population_run
  if mode == steps.mode:
    pytest.skip(f'the fixture ran {mode}')
  config = sweep.member_config(configs[0], {'steps_per_call': 4})
  result = population.train_population(config, grid, ds, mode=mode, log=_quiet)
  for row in range(len(grid)):
    assert (
      _max_diff(result.final_states[row].params, auto.final_states[row].params)
      < 1e-3
    )
  np.testing.assert_allclose(result.train_loss, auto.train_loss, rtol=1e-4)
  np.testing.assert_allclose(
    result.val_accuracy, auto.val_accuracy, atol=1.01 / len(ds.val)
  )


def test_member_bytes_of_sequences(population_run):
  """The memory estimate builds float feature batches with lengths."""
  configs, ds, *_ = population_run
  loop = sweep.member_bytes(configs[0], ds, 'loop')
  assert loop > 0
  assert sweep.member_bytes(configs[0], ds, 'vmap') > loop // 4


def test_run_sweep_of_sequences_saves_a_normal_run(data_dir, tmp_path):
  """The whole sweep: the sequence fields reach the data, the best member
  is written as a single run that --eval_only re-scores."""
  config = _sweep_config(data_dir, num_epochs=1, population_chunk=2)
  workdir = str(tmp_path)
  summary = sweep.run_sweep(
    config,
    workdir,
    base_config=japanese_vowels.get_config(),
    command='python -m experiments.japanese_vowels',
    log=_quiet,
  )
  with open(os.path.join(workdir, 'sweep.json')) as f:
    saved = json.load(f)
  assert len(saved['members']) == 2
  member = sweep.member_config(config, summary['best']['values'])
  results = train.train_and_evaluate(member, workdir, eval_only=True)
  assert results['test_accuracy'] == pytest.approx(
    summary['best']['test_accuracy'], abs=1e-6
  )
  assert '--config.num_buckets=3' in summary['best']['eval_command']


def test_token_ids_init_as_int32_and_train_as_the_single_run(
  monkeypatch, tmp_path
):
  """Texts: an embedding, initialised from an int32 dummy; member 0 is the
  single run of its config on the same (synthetic) data."""
  ds = synthetic_ids.id_data()
  config = spam.get_config()
  config.hidden_size, config.embed_size, config.vocab_size = 16, 16, 64
  config.batch_size, config.num_epochs, config.ema_decay = 16, 1, 0.0
  monkeypatch.setattr(data, 'load_config', lambda *a, **k: ds)
  monkeypatch.setattr(data, 'load', lambda *a, **k: ds)
  result = population.train_population(
    config, [{}, {'learning_rate': 1e-2}], ds, log=_quiet
  )
  assert result.final_states[0].params['embed']['embedding'].shape == (64, 16)
  train.train_and_evaluate(config, str(tmp_path))
  state, _ = train.resume(train.setup(config, str(tmp_path), ds=ds))
  assert _max_diff(result.final_states[0].params, state.params) < 2e-3
  records = metrics.epoch_records(
    metrics.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  )
  np.testing.assert_allclose(
    result.train_loss[0], [r['train_loss'] for r in records], rtol=1e-4
  )


@pytest.mark.parametrize('field', ['num_buckets', 'max_len'])
def test_how_sequences_become_arrays_cannot_be_swept(field):
  """Every member reads the one loaded data set."""
  config = _sweep_config(None, **{f'sweep_{field}': '8,16'})
  with pytest.raises(ValueError, match='cannot be swept'):
    sweep.swept_values(config)
