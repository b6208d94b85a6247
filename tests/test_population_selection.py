"""How a population picks each member's best epoch, its weights (live or
EMA) and the best member: by ``best_by``, as a single run picks its best
epoch (``jaxcls.training.epoch_end.beats``)."""

import dataclasses
import os
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic_ids
from experiments import spam
from jaxcls import config as config_lib
from jaxcls import data, sweep
from jaxcls.sweep import population
from jaxcls.training import checkpoint, epoch_end, metrics
from jaxcls.training import run as train

NAN = float('nan')


def _scores(accuracy, loss) -> dict:
  return {'accuracy': np.asarray(accuracy), 'loss': np.asarray(loss)}


def test_beats_is_strict_and_a_nan_loss_never_wins():
  by_acc = lambda a, b: bool(epoch_end.beats('accuracy', a, b))
  by_loss = lambda a, b: bool(epoch_end.beats('loss', a, b))
  a = {'accuracy': 0.8, 'loss': 0.5}
  assert by_acc(a, {'accuracy': 0.7, 'loss': 0.1})
  assert not by_acc(a, {'accuracy': 0.8, 'loss': 9.0})  # a tie: not better
  assert by_loss(a, {'accuracy': 0.9, 'loss': 0.6})
  assert not by_loss(a, {'accuracy': 0.1, 'loss': 0.5})  # a tie
  assert by_loss(a, {'accuracy': 0.9, 'loss': -1.0})  # none yet
  assert by_loss(a, {'accuracy': 0.9, 'loss': NAN})
  for bad in (NAN, float('inf')):
    assert not by_loss(
      {'accuracy': 1.0, 'loss': bad}, {'accuracy': 0, 'loss': -1}
    )
    assert not by_loss(
      {'accuracy': 1.0, 'loss': bad}, {'accuracy': 0, 'loss': 1}
    )
  # Elementwise on the members' arrays.
  got = epoch_end.beats(
    'loss',
    _scores([0, 0, 0, 0], [0.2, NAN, 0.4, 0.1]),
    _scores([1] * 4, [0.3, -1, 0.3, -1]),
  )
  np.testing.assert_array_equal(got, [True, False, False, True])


def _config(**fields):
  c = config_lib.get_config()
  for key, value in fields.items():
    c[key] = value
  return c


def test_a_single_runs_best_epoch_never_takes_a_nan_loss():
  progress = train.Progress()  # best_val_loss -1: none yet
  by_loss = _config(best_by='loss')
  assert not epoch_end._better(
    by_loss, {'accuracy': 0.9, 'loss': NAN}, progress
  )
  assert epoch_end._better(by_loss, {'accuracy': 0.1, 'loss': 2.0}, progress)
  progress.best_val_accuracy, progress.best_val_loss = 0.5, 0.4
  assert not epoch_end._better(
    by_loss, {'accuracy': 0.9, 'loss': 0.4}, progress
  )
  assert epoch_end._better(by_loss, {'accuracy': 0.1, 'loss': 0.3}, progress)
  by_acc = _config(best_by='accuracy')
  assert epoch_end._better(by_acc, {'accuracy': 0.6, 'loss': NAN}, progress)
  assert not epoch_end._better(by_acc, {'accuracy': 0.5, 'loss': 0.1}, progress)


@flax.struct.dataclass
class _State:
  """What ``ema_as_state`` and the population's copies need of a state."""

  params: dict
  batch_stats: dict
  ema: dict
  step: jax.Array


def _state(live: float, ema: float, step: int = 0) -> _State:
  return _State(
    {'w': jnp.full(2, live)},
    {'m': jnp.full(1, live)},
    {'params': {'w': jnp.full(2, ema)}, 'batch_stats': {'m': jnp.full(1, ema)}},
    jnp.asarray(step),
  )


@dataclasses.dataclass
class _Run:
  """``_validate``'s view of a run: scores keyed by the state's weight."""

  config: object
  table: dict  # params['w'][0] -> scores
  ds: object = dataclasses.field(
    default_factory=lambda: types.SimpleNamespace(val=None)
  )

  def score(self, state, split):
    del split
    return dict(self.table[float(state.params['w'][0])])


@pytest.mark.parametrize(
  'best_by, weights, note',
  [
    ('accuracy', 'live', ' (EMA 0.8000)'),
    ('loss', 'ema', ' (EMA 0.8000, loss 0.3000 vs live 0.5000, kept)'),
  ],
)
def test_validate_keeps_the_ema_by_best_by(best_by, weights, note):
  # The EMA validates with the same accuracy but a lower loss: kept by loss
  # only (by accuracy, the note is the one it always was).
  table = {
    1.0: {'accuracy': 0.8, 'loss': 0.5},
    2.0: {'accuracy': 0.8, 'loss': 0.3},
  }
  run = _Run(_config(best_by=best_by), table)
  val, candidate, kept, got_note = epoch_end._validate(run, _state(1.0, 2.0))
  assert (kept, got_note) == (weights, note)
  assert float(candidate.params['w'][0]) == (2.0 if weights == 'ema' else 1.0)
  assert val['loss'] == (0.3 if weights == 'ema' else 0.5)
  more_accurate = {**table, 2.0: {'accuracy': 0.9, 'loss': 0.3}}
  run = _Run(_config(best_by='accuracy'), more_accurate)
  assert epoch_end._validate(run, _state(1.0, 2.0))[3] == ' (EMA 0.9000, kept)'


def _epoch_metrics(k: int, steps: int = 2) -> list:
  ones = np.ones((steps, k), np.float32)
  return [{'loss': ones, 'correct': ones, 'count': 4 * ones}]


def test_end_of_epoch_by_loss_picks_the_lowest_finite_loss():
  k, lines = 4, []
  config = _config(best_by='loss', patience=1, ema_decay=0.9)
  states = tuple(_state(float(i), 10.0 + i, step=2) for i in range(k))
  result = population.PopulationResult.start(k, 3, states)
  # Epoch 1: member 2 kept its EMA; member 3's loss is NaN: no best however
  # accurate, so with patience 1 it stops (as a single run would).
  val = {
    **_scores([0.5, 0.5, 0.6, 0.99], [0.5, 0.6, 0.7, NAN]),
    'ema': np.array([0, 0, 1, 0], bool),
  }
  active = population.end_of_epoch(
    result,
    states,
    1,
    2,
    _epoch_metrics(k),
    np.ones(k, bool),
    val,
    config,
    lines.append,
  )
  np.testing.assert_array_equal(result.best_epoch, [1, 1, 1, 0])
  np.testing.assert_array_equal(result.best_val_loss, [0.5, 0.6, 0.7, -1])
  assert list(result.best_weights) == ['live', 'live', 'ema', 'live']
  assert float(result.best_states[2].params['w'][0]) == 12.0  # its EMA's
  assert float(result.best_states[2].batch_stats['m'][0]) == 12.0
  np.testing.assert_array_equal(active, [True, True, True, False])
  # Epoch 2: a lower accuracy with a lower loss wins; a NaN loss with a
  # higher accuracy does not, nor a higher loss; frozen member 3 is skipped.
  states = tuple(_state(float(i) + 100, 200.0 + i, step=4) for i in range(k))
  val = {
    **_scores([0.1, 0.99, 0.9, 0.99], [0.4, NAN, 0.8, 0.1]),
    'ema': np.zeros(k, bool),
  }
  active = population.end_of_epoch(
    result, states, 2, 4, _epoch_metrics(k), active, val, config, lines.append
  )
  np.testing.assert_array_equal(result.best_epoch, [2, 1, 1, 0])
  np.testing.assert_array_equal(result.best_val_loss, [0.4, 0.6, 0.7, -1])
  np.testing.assert_array_equal(result.best_val_accuracy, [0.1, 0.5, 0.6, -1])
  assert list(result.best_weights) == ['live', 'live', 'ema', 'live']
  got = [float(s.params['w'][0]) for s in result.best_states]
  assert got == [100, 1, 12, 3]  # member 3: the initial state
  np.testing.assert_array_equal(result.best_step, [4, 2, 2, 0])
  np.testing.assert_array_equal(
    result.val_loss[:, :2], [[0.5, 0.4], [0.6, NAN], [0.7, 0.8], [NAN, NAN]]
  )
  np.testing.assert_array_equal(result.epochs_trained, [2, 2, 2, 1])
  # Patience 1 by loss: members 1 and 2 have not improved for an epoch.
  np.testing.assert_array_equal(active, [True, False, False, False])
  assert not result.diverged.any() and lines == []


def _records(accuracy, losses) -> list:
  """``member_records``-like rows: member i has learning rate 0.1 (i + 1)."""
  return [
    {
      'member': i,
      'values': {'learning_rate': 0.1 * (i + 1)},
      'best_val_accuracy': a,
      'best_val_loss': loss if loss >= 0 else None,
      'best_weights': 'ema' if i == 2 else 'live',
      'best_epoch': 1,
      'epochs_trained': 1,
      'status': 'ok',
      'val_accuracy': [a / 2, a],
    }
    for i, (a, loss) in enumerate(zip(accuracy, losses))
  ]


def test_best_member_and_the_table_rank_by_best_by():
  accuracy = [0.9, 0.7, 0.8, 0.7, 0.95]
  losses = [0.5, 0.3, 0.3, -1.0, NAN]  # -1: never improved; NaN: none
  assert population.best_member(accuracy) == 4
  assert population.best_member(accuracy, losses, 'accuracy') == 4
  assert population.best_member(accuracy, losses, 'loss') == 1  # first on ties
  assert population.best_member([0.5, 0.5], [None, 0.9], 'loss') == 1
  np.testing.assert_array_equal(
    population.member_order(accuracy, losses, 'loss'), [1, 2, 0, 3, 4]
  )
  records = _records(accuracy, losses)
  ranks = lambda table: [int(row.split('|')[2]) for row in table[2:]]
  by_loss = sweep.format_table(records, ['learning_rate'], 'loss').splitlines()
  assert ranks(by_loss) == [1, 2, 0, 3, 4]
  assert '| ema ' in by_loss[3] and '| -  ' in by_loss[5]
  by_accuracy = sweep.format_table(records, ['learning_rate']).splitlines()
  assert ranks(by_accuracy) == [4, 0, 2, 1, 3]


@pytest.mark.parametrize('best_by, selected', [('accuracy', 4), ('loss', 1)])
def test_the_sweep_plot_marks_the_member_best_by_selects(best_by, selected):
  """sweep.png's thick curve is the member the sweep saved, by best_by."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  from jaxcls.commands import report_figures

  records = _records([0.9, 0.7, 0.8, 0.7, 0.95], [0.5, 0.3, 0.3, -1.0, NAN])
  fig, ax = plt.subplots()
  report_figures._sweep_members(ax, records, best_by)
  thick = [line for line in ax.get_lines() if line.get_linewidth() > 2]
  plt.close(fig)
  assert len(thick) == 1
  expected = f'learning_rate={0.1 * (selected + 1):g}'
  assert thick[0].get_label() == expected
  assert best_by in ax.get_title()


def test_best_by_cannot_be_swept():
  c = spam.get_config()
  c.sweep_best_by = 'accuracy,loss'
  with pytest.raises(
    ValueError, match='sweep_best_by: best_by cannot be swept'
  ):
    sweep.swept_values(c)


def test_member_records_hold_the_loss_and_the_weights():
  result = population.PopulationResult.start(2, 1, (_state(0, 1), _state(1, 2)))
  result.best_val_loss[:] = [0.25, -1.0]
  result.best_weights[0] = 'ema'
  records = sweep.member_records([{'seed': 0}, {'seed': 1}], [([0, 1], result)])
  assert [r['best_val_loss'] for r in records] == [0.25, None]
  assert [r['best_weights'] for r in records] == ['ema', 'live']
  assert records[0]['val_loss'] == [None]


def _max_diff(a, b) -> float:
  return max(
    float(jnp.max(jnp.abs(x - y)))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


def _best(config, workdir: str, ds) -> tuple:
  """The best checkpoint of ``workdir``: ``(state, meta)``."""
  run = train.setup(config, workdir, ds=ds)
  return checkpoint.restore(run.best, run.state, run.fingerprint, config=config)


@pytest.mark.slow  # Trains a population and a single run (about 30 s).
def test_a_member_by_loss_with_an_ema_selects_as_its_single_run(
  monkeypatch, tmp_path
):
  """best_by='loss' and an EMA: member 0 (the config's own values) gets its
  single run's best epoch, weights and best parameters, in the population
  and in the checkpoint ``save_best_member`` writes. The EMA's params are
  the single run's up to float rounding (the injected learning rate
  multiplies in another order), as in tests/test_sweep.py."""
  ds = synthetic_ids.id_data()
  config = spam.get_config()
  config.hidden_size, config.embed_size, config.vocab_size = 16, 16, 64
  config.batch_size, config.num_epochs, config.learning_rate = 16, 3, 1e-2
  config.ema_decay, config.best_by = 0.9, 'loss'
  monkeypatch.setattr(data, 'load_config', lambda *a, **k: ds)
  monkeypatch.setattr(data, 'load', lambda *a, **k: ds)
  result = population.train_population(
    config, [{}, {'learning_rate': 3e-2}], ds, log=lambda *a: None
  )
  single = str(tmp_path / 'single')
  train.train_and_evaluate(config, single)
  records = metrics.epoch_records(
    metrics.read_jsonl(os.path.join(single, 'metrics.jsonl'))
  )
  single_state, single_meta = _best(config, single, ds)
  # Chosen with this data and seed so that the EMA is kept at the best
  # epoch (there with the live weights' accuracy: by accuracy it would not).
  assert single_meta['weights'] == 'ema'
  losses = [r['val_loss'] for r in records]
  assert single_meta['epoch'] == int(np.argmin(losses)) + 1
  np.testing.assert_allclose(result.val_loss[0], losses, rtol=1e-4)
  assert int(result.best_epoch[0]) == single_meta['epoch']
  assert result.best_weights[0] == single_meta['weights']
  assert result.best_val_loss[0] == pytest.approx(
    single_meta['best_val_loss'], rel=1e-4
  )
  member = result.best_states[0]
  assert int(member.step) == int(single_state.step)
  assert _max_diff(member.params, single_state.params) < 2e-3
  assert _max_diff(member.params, member.ema['params']) == 0  # EMA as params
  assert _max_diff(member.ema, single_state.ema) < 2e-3
  # The sweep's best checkpoint of that member: the same choice.
  swept = str(tmp_path / 'swept')
  sweep.save_best_member(swept, config, ds, result, 0)
  saved_state, saved_meta = _best(config, swept, ds)
  for key in ('epoch', 'weights'):
    assert saved_meta[key] == single_meta[key], key
  assert saved_meta['best_val_loss'] == float(result.best_val_loss[0])
  assert _max_diff(saved_state.params, member.params) == 0
