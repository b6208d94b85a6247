"""The metric writer: JSON lines + TensorBoard events, and the training hook."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.training import guards, metrics
from trained_workdir import (
  BATCH_SIZE,
  LOG_EVERY_STEPS,
  NUM_EPOCHS,
  TRAIN_EXAMPLES,
  tiny_config,
  trained_workdir,
)


def read_events(tb_dir: str) -> tuple[dict, list]:
  """``({tag: [(step, value)]}, [plugin names])`` from every event file."""
  from tensorflow.compat.v1 import train as tf_train

  scalars, plugins = {}, []
  for path in sorted(glob.glob(os.path.join(tb_dir, 'events.out.*'))):
    for event in tf_train.summary_iterator(path):
      for value in event.summary.value:
        plugins.append(value.metadata.plugin_data.plugin_name)
        if value.HasField('simple_value'):
          scalars.setdefault(value.tag, []).append(
            (event.step, value.simple_value)
          )
  return scalars, plugins


def test_writer_writes_json_lines_and_tensorboard(tmp_path):
  config = tiny_config()
  with metrics.MetricWriter(str(tmp_path), config) as writer:
    writer.write_scalars(5, {'train_loss': 0.5, 'val_accuracy': 0.25})
    writer.write_scalars(10, {'train_loss': np.float32(0.25)})
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert records == [
    {'step': 5, 'train_loss': 0.5, 'val_accuracy': 0.25},
    {'step': 10, 'train_loss': 0.25},
  ]
  scalars, plugins = read_events(str(tmp_path / 'tb'))
  assert scalars['train_loss'] == [(5, 0.5), (10, 0.25)]
  assert scalars['val_accuracy'] == [(5, 0.25)]
  assert 'hparams' in plugins and 'text' in plugins


def read_hparams(tb_dir: str) -> dict:
  """The hyperparameters of the session-start summary, as Python values."""
  from tensorboardX.proto import plugin_hparams_pb2
  from tensorflow.compat.v1 import train as tf_train

  for path in glob.glob(os.path.join(tb_dir, 'events.out.*')):
    for event in tf_train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag != '_hparams_/session_start_info':
          continue
        data = plugin_hparams_pb2.HParamsPluginData.FromString(
          value.metadata.plugin_data.content
        )
        return {
          k: getattr(v, v.WhichOneof('kind'))
          for k, v in data.session_start_info.hparams.items()
        }
  raise AssertionError('no hparams session-start summary found')


def test_hparams_hold_every_config_field(tmp_path):
  config = tiny_config()
  metrics.MetricWriter(str(tmp_path), config).close()
  logged = read_hparams(str(tmp_path / 'tb'))
  assert set(logged) == set(config.to_dict())
  assert logged['learning_rate'] == pytest.approx(config.learning_rate)
  assert logged['dataset'] == 'fashion_mnist'
  assert logged['data_dir'] == 'null'  # None, as its JSON text.


def test_reopened_writer_appends(tmp_path):
  with metrics.MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(1, {'x': 1.0})
  with metrics.MetricWriter(str(tmp_path)) as writer:
    writer.write_scalars(2, {'x': 2.0})
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['step'] for r in records] == [1, 2]
  assert read_events(str(tmp_path / 'tb'))[0]['x'] == [(1, 1.0), (2, 2.0)]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with metrics.MetricWriter(str(tmp_path), tiny_config()) as writer:
    writer.write_scalars(1, {'x': 1.0})
  assert os.listdir(tmp_path) == []


def test_torn_last_line_is_skipped(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')
  assert metrics.read_jsonl(str(path)) == [{'step': 1, 'x': 1.0}]


def test_window_scalars_match_numpy():
  rng = np.random.default_rng(0)
  steps = [
    {
      'loss': jnp.float32(rng.uniform(0, 64)),
      'correct': jnp.int32(rng.integers(0, 64)),
      'count': jnp.float32(64),
    }
    for _ in range(5)
  ]
  out = metrics.window_scalars(guards.per_step(steps), epoch=1.5)
  losses = np.array([float(s['loss']) for s in steps])
  correct = np.array([int(s['correct']) for s in steps])
  assert out['train_loss_recent'] == pytest.approx(losses.sum() / 320)
  assert out['train_accuracy_recent'] == pytest.approx(correct.sum() / 320)
  assert out['epoch_progress'] == 1.5 and out['window_steps'] == 5


def test_epoch_records_keep_last_of_each_epoch():
  records = [
    {'step': 3, 'train_loss_recent': 1.0},
    {'step': 8, 'epoch': 1, 'val_accuracy': 0.1},
    {'step': 16, 'epoch': 2, 'val_accuracy': 0.2},
    {'step': 16, 'epoch': 2, 'val_accuracy': 0.3},
  ]  # A resumed run.
  assert [r['val_accuracy'] for r in metrics.epoch_records(records)] == [
    0.1,
    0.3,
  ]


@pytest.mark.slow
def test_training_writes_epoch_and_step_records():
  workdir, results = trained_workdir()
  records = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  steps_per_epoch = TRAIN_EXAMPLES // BATCH_SIZE
  total = NUM_EPOCHS * steps_per_epoch
  epochs = metrics.epoch_records(records)
  assert [r['epoch'] for r in epochs] == list(range(1, NUM_EPOCHS + 1))
  assert [r['step'] for r in epochs] == [
    steps_per_epoch * e for e in range(1, NUM_EPOCHS + 1)
  ]
  # The best epoch's validation accuracy is the one the run kept.
  assert max(r['val_accuracy'] for r in epochs) == pytest.approx(
    results['best_val_accuracy']
  )
  for r in epochs:
    assert r['images_per_second'] == pytest.approx(
      steps_per_epoch * BATCH_SIZE / r['epoch_seconds']
    )
    assert r['learning_rate'] == pytest.approx(tiny_config().learning_rate)
    assert 0 <= r['train_accuracy'] <= 1 and np.isfinite(r['train_loss'])
  logged = [r['step'] for r in records if 'train_loss_recent' in r]
  assert logged == list(range(LOG_EVERY_STEPS, total + 1, LOG_EVERY_STEPS))
  # Each window holds the steps since the last log, cut at the epoch start.
  windows = [r['window_steps'] for r in records if 'window_steps' in r]
  assert windows == [
    min(LOG_EVERY_STEPS, (s - 1) % steps_per_epoch + 1) for s in logged
  ]
  scalars, _ = read_events(os.path.join(workdir, 'tb'))
  assert [s for s, _ in scalars['val_accuracy']] == [r['step'] for r in epochs]
  assert [v for _, v in scalars['val_accuracy']] == pytest.approx(
    [r['val_accuracy'] for r in epochs]
  )
