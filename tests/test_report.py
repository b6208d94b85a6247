"""The report: plots, confusion matrix, misclassified grid, model summary,
per-class scores and calibration."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcls import data
from jaxcls.commands import report, report_figures
from jaxcls.training import inspection
from trained_workdir import trained_workdir

pytestmark = pytest.mark.slow  # Trains models: the full tier.


@pytest.fixture(scope='module')
def reported():
  workdir, results = trained_workdir()
  return workdir, results, report.report(workdir, num_misclassified=10)


@pytest.fixture(scope='module')
def test_split():
  return data.read_split(data.get_builder('fashion_mnist'), 'test')


def test_writes_four_nonblank_pngs_and_the_json(reported):
  workdir, _, out = reported
  pngs = {'curves', 'confusion_matrix', 'misclassified', 'reliability'}
  assert set(out['paths']) == pngs | {'report_json'}
  assert os.path.isfile(out['paths']['report_json'])
  for path in (out['paths'][name] for name in pngs):
    assert path.startswith(os.path.join(workdir, 'report'))
    with Image.open(path) as image:
      assert image.format == 'PNG'
      pixels = np.asarray(image.convert('L'), np.float32)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.std() > 10  # Something was drawn.


def test_confusion_matrix_matches_a_plain_loop(reported, test_split):
  workdir, results, out = reported
  _, state = inspection.load_best(workdir)
  # Reference: the model applied by hand, 500 images at a time, counted in a
  # Python loop.
  expected = np.zeros((10, 10), int)
  for start in range(0, len(test_split), 500):
    images = test_split.images[start : start + 500]
    logits = state.apply_fn(
      {'params': state.params}, (images.astype(np.float32) / 255 - 0.5) / 0.5
    )
    for label, guess in zip(
      test_split.labels[start : start + 500], np.asarray(logits).argmax(-1)
    ):
      expected[label, guess] += 1
  np.testing.assert_array_equal(out['confusion_matrix'], expected)
  # The same best checkpoint, scored by the training loop's own evaluation.
  assert out['test_accuracy'] == pytest.approx(
    results['test_accuracy'], abs=1e-6
  )


def test_report_json_agrees_with_the_confusion_matrix(reported):
  _, _, out = reported
  with open(out['paths']['report_json']) as f:
    saved = json.load(f)
  assert saved == out['scores']
  matrix = out['confusion_matrix']
  rows = saved['per_class']
  assert [r['name'] for r in rows] == out['class_names']
  for i, row in enumerate(rows):
    assert row['support'] == matrix[i].sum()
    assert row['recall'] == pytest.approx(matrix[i, i] / matrix[i].sum())
  assert saved['accuracy'] == pytest.approx(out['test_accuracy'])
  assert saved['macro_avg']['support'] == matrix.sum()
  assert sum(r['count'] for r in saved['reliability']) == matrix.sum()
  assert 0 <= saved['ece'] == out['ece'] <= 1
  top = saved['top_confusions']
  assert len(top) == min(5, np.count_nonzero(matrix - np.diag(np.diag(matrix))))
  counts = [int(line.rsplit(': ', 1)[1]) for line in top]
  assert counts == sorted(counts, reverse=True)


def test_class_names_are_fashion_mnist_labels(reported):
  import tensorflow_datasets as tfds

  # TFDS's own fashion_mnist builder names the labels (no download needed).
  expected = tfds.builder('fashion_mnist').info.features['label'].names
  assert reported[2]['class_names'] == expected


def test_parameter_count_and_flops_match_the_architecture(reported):
  # CNN: conv 3x3 1->16, conv 3x3 16->32, dense 7*7*32->128, dense 128->10.
  layers = [(3 * 3 * 1, 16), (3 * 3 * 16, 32), (7 * 7 * 32, 128), (128, 10)]
  assert reported[2]['parameters'] == sum(i * o + o for i, o in layers)
  # Multiply-adds at full resolution; XLA skips the zero padding of 'SAME'
  # convolutions and adds the elementwise ops, so allow 10%.
  macs = 28 * 28 * 9 * 16 + 14 * 14 * 9 * 16 * 32 + 7 * 7 * 32 * 128 + 1280
  assert reported[2]['flops_per_example'] == pytest.approx(2 * macs, rel=0.1)


def test_flops_scale_per_example(reported):
  workdir = reported[0]
  _, state = inspection.load_best(workdir)
  one = inspection.flops_per_example(state, (28, 28, 1), batch_size=1)
  eight = inspection.flops_per_example(state, (28, 28, 1), batch_size=8)
  assert eight == pytest.approx(one, rel=0.01)


def test_model_summary_lists_layers_and_shapes(reported):
  workdir = reported[0]
  config, _ = inspection.load_best(workdir)
  from jaxcls import models

  text = inspection.model_summary(models.create_model(config, 10), (28, 28, 1))
  for needle in (
    'Conv_0',
    'Conv_1',
    'Dense_0',
    'Dense_1',
    'float32[1,28,28,16]',
    'float32[1,10]',
    '206,922',
    'flops',
  ):
    assert needle in text
  assert '\x1b[' not in text  # Plain text, no terminal colour codes.


def test_misclassified_grid_shows_wrong_predictions_only(reported, test_split):
  _, _, out = reported
  matrix = out['confusion_matrix']
  assert len(out['misclassified']) == min(10, matrix.sum() - np.trace(matrix))
  labels = test_split.labels[:30]
  probs = np.eye(10)[labels]  # Right everywhere ...
  probs[[2, 7, 11]] = np.roll(probs[[2, 7, 11]], 1, axis=1)  # ... but here.
  names = [f'c{i}' for i in range(10)]
  titles = report_figures.misclassified_titles(labels, probs, names, 25)
  assert list(titles) == [2, 7, 11]
  for i, title in titles.items():
    assert title == (
      f'#{i} true: c{labels[i]}\npred: c{(labels[i] + 1) % 10} (100%)'
    )
  first_two = report_figures.misclassified_titles(labels, probs, names, 2)
  assert list(first_two) == [2, 7]


def test_curves_need_a_finished_epoch(tmp_path):
  with pytest.raises(ValueError, match='no completed epoch'):
    report_figures.plot_curves(
      [{'step': 3, 'train_loss_recent': 1.0, 'epoch_progress': 0.3}],
      str(tmp_path / 'c.png'),
    )


def test_cli_without_checkpoint_prints_one_line(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.report',
      f'--workdir={tmp_path / "nothing"}',
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert proc.returncode == 2
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error')]
  assert len(lines) == 1 and 'no best checkpoint' in lines[0]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'nothing')  # Nothing was created.
