"""Whole runs on real Fashion-MNIST: accuracy, checkpoints, resume, eval."""

import json
import os

import pytest

from conftest import tiny_config
from jaxcls.data import local_files as local_data
from jaxcls.training import checkpoint
from jaxcls.training import run as train

pytestmark = [
  pytest.mark.slow,  # Trains models: the full tier.
  pytest.mark.skipif(
    not local_data.files_present(),
    reason='needs dataset-fashion-mnist (see .ci/run)',
  ),
]

SHORT = dict(train_examples=6000, num_epochs=2)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, train.train_and_evaluate(tiny_config(**SHORT), workdir)


def test_short_real_run_learns(trained):
  workdir, results = trained
  # Chance is 0.10; two epochs over 6000 images reach about 0.80.
  assert results['test_accuracy'] > 0.75
  assert results['best_val_accuracy'] > 0.75
  with open(os.path.join(workdir, 'results.json')) as f:
    on_disk = json.load(f)
  for key in (
    'dataset',
    'model',
    'epochs',
    'test_accuracy',
    'best_val_accuracy',
    'train_seconds',
    'train_images_per_second',
    'params_sha256',
    'compile_seconds',
  ):
    assert on_disk[key] == results[key]
  assert on_disk['train_images_per_second'] > 0


def test_results_hold_per_class_scores_of_the_test_split(trained):
  """Counted from the best model's test predictions: they agree with the
  test accuracy the run reports, and cover every class and example."""
  workdir, results = trained
  with open(os.path.join(workdir, 'results.json')) as f:
    scores = json.load(f)['test_scores']
  assert scores == results['test_scores']
  assert abs(scores['accuracy'] - results['test_accuracy']) < 1e-6
  assert [r['name'] for r in scores['per_class']][:2] == [
    'T-shirt/top',
    'Trouser',
  ]
  assert sum(r['support'] for r in scores['per_class']) == 10000
  recall = sum(r['recall'] * r['support'] for r in scores['per_class'])
  assert abs(recall / 10000 - results['test_accuracy']) < 1e-6
  assert 0 <= scores['ece'] <= 1 and len(scores['top_confusions']) == 5


def test_eval_only_restores_the_best_model_and_scores_it_identically(trained):
  workdir, results = trained
  again = train.train_and_evaluate(
    tiny_config(**SHORT), workdir, eval_only=True
  )
  assert again['test_accuracy'] == results['test_accuracy']
  assert again['test_loss'] == results['test_loss']


def test_interrupted_run_resumes_to_the_same_parameters(trained, tmp_path):
  _, uninterrupted = trained
  workdir = str(tmp_path)
  first = train.train_and_evaluate(
    tiny_config(**{**SHORT, 'num_epochs': 1}), workdir
  )
  assert first['params_sha256'] != uninterrupted['params_sha256']
  resumed = train.train_and_evaluate(tiny_config(**SHORT), workdir)
  assert resumed['params_sha256'] == uninterrupted['params_sha256']
  assert resumed['test_accuracy'] == uninterrupted['test_accuracy']


def test_a_different_config_is_refused(trained):
  workdir, _ = trained
  with pytest.raises(checkpoint.CheckpointError, match='different model or'):
    train.train_and_evaluate(tiny_config(**SHORT, learning_rate=0.01), workdir)


def test_a_corrupt_checkpoint_is_refused(trained, tmp_path):
  import shutil

  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained[0], workdir)
  latest = os.path.join(workdir, 'checkpoints', 'latest')
  step_dir = os.path.join(latest, os.listdir(latest)[0])
  damaged = 0
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged
  with pytest.raises(checkpoint.CheckpointError, match='corrupt|unreadable'):
    train.train_and_evaluate(tiny_config(**SHORT), workdir)
