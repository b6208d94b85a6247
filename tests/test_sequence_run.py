"""Whole runs on real sequences (JapaneseVowels from sktime's wheel) through
the one training loop: buckets, lengths, resume, the results."""

import contextlib
import io
import os

import numpy as np
import pytest

from experiments import japanese_vowels
from jaxcls import config as config_lib
from jaxcls import data
from jaxcls.data import buckets
from jaxcls.training import feed
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


def _config(data_dir, **overrides):
  c = japanese_vowels.get_config()
  c.data_dir, c.manual_dir = data_dir, WHEEL
  c.hidden_size, c.embed_size, c.num_epochs, c.num_buckets = 16, 16, 2, 3
  c.lr_schedule = 'constant'  # So that one epoch, then two, is a resume.
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = train.train_and_evaluate(_config(data_dir), workdir)
  return workdir, results, out.getvalue()


def test_a_short_run_learns_and_reports_its_buckets(trained):
  """Above chance (1/9) on the 370 test series; one program per bucket;
  its epoch lines count sequences."""
  _, results, printed = trained
  epochs = [line for line in printed.splitlines() if line.startswith('[epoch')]
  assert len(epochs) == 2 and all('sequences/s' in x for x in epochs), epochs
  assert results['test_accuracy'] > 0.5
  assert results['test_scores']['per_class'][0]['support'] > 0
  lengths = results['padded_lengths']
  assert lengths == sorted(lengths) and 1 < len(lengths) <= 3
  assert results['compiled_programs'] == len(lengths)
  assert 0 <= results['padding_share'] < 0.25


def test_an_interrupted_run_resumes_to_the_same_parameters(
  trained, data_dir, tmp_path
):
  """One epoch, then the same command for two: the bits of two at once.
  The first asks for 4 steps per call, which the host feed of sequences
  must not take as leave to skip steps."""
  _, uninterrupted, _ = trained
  first = train.train_and_evaluate(
    _config(data_dir, num_epochs=1, steps_per_call=4), str(tmp_path)
  )
  assert first['steps_per_call'] == 1
  assert first['params_sha256'] != uninterrupted['params_sha256']
  resumed = train.train_and_evaluate(_config(data_dir), str(tmp_path))
  assert resumed['params_sha256'] == uninterrupted['params_sha256']


def test_an_epochs_batches_are_a_function_of_seed_and_epoch(data_dir):
  """Bucketed rows: the same for (seed, epoch), each example once, and less
  padding than the plain (seed, epoch) order."""
  ds = data.load_config(_config(data_dir))
  split = ds.train
  rows = feed.sequence_rows(0, 1, split, 16)
  np.testing.assert_array_equal(rows, feed.sequence_rows(0, 1, split, 16))
  assert not np.array_equal(rows, feed.sequence_rows(0, 2, split, 16))
  assert len(np.unique(rows)) == rows.size
  plain = feed.epoch_rows(0, 1, [split], (0,), 16)
  share = buckets.padding_share(split.lengths, rows, ds.buckets)
  assert share < buckets.padding_share(split.lengths, plain, ds.buckets)


@pytest.mark.parametrize(
  'overrides,words',
  [
    (dict(model='cnn'), "set --config.model='sequence'"),
    (dict(augment='crop_flip'), "set --config.augment='none'"),
    (dict(dataset='fashion_mnist'), "model 'sequence' and readout 'max'"),
  ],
)
def test_a_config_that_cannot_read_sequences_is_one_line(overrides, words):
  """Sequence datasets need model 'sequence', and no image options."""
  c = _config(None, **overrides)
  with pytest.raises(ValueError, match='^[^\n]*$') as e:
    config_lib.validate(c)
  assert words in str(e.value)
