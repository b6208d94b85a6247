"""Sequence datasets in memory: validation rows, classes, normalisation, and
a real UCR problem through ``sequences.load``.

The real files are read from sktime's wheel (``pip download --no-deps
sktime==1.2.0``) at ``$JAXCLS_SKTIME_WHEEL``; without it that test skips.
"""

import os

import numpy as np
import pytest

from jaxcls.data import sequences, ucr

# Where .ci/run fetches the files (an ignored folder of the checkout).
DOWNLOADS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  'data',
  'downloads',
)
WHEEL = os.environ.get(
  'JAXCLS_SKTIME_WHEEL',
  f'{DOWNLOADS}/sktime-1.2.0-py3-none-any.whl',
)
needs_wheel = pytest.mark.skipif(
  not os.path.isfile(WHEEL),
  reason=f'no sktime wheel at {WHEEL}: run `{ucr.SKTIME_COMMAND}` and set '
  'JAXCLS_SKTIME_WHEEL to it',
)

# Classes of 50, 23, 7, 2 and 1 examples, shuffled.
SIZES = (50, 23, 7, 2, 1)
LABELS = (
  np.random.default_rng(5)
  .permutation(np.repeat(np.arange(len(SIZES)), SIZES))
  .astype(np.int32)
)


def _series(n, mean, std, seed, channels=3):
  """``n`` float32 series of 2..20 steps, per channel ``mean`` and ``std``."""
  rng = np.random.default_rng(seed)
  return [
    (rng.normal(size=(int(t), channels)) * std + mean).astype(np.float32)
    for t in rng.integers(2, 21, n)
  ]


def _real_steps(padded):
  """The steps before each end of a Padded, stacked: (steps, channels)."""
  return np.concatenate([x[:t] for x, t in zip(padded.array, padded.lengths)])


# ---------------------------------------------------------- validation.


@pytest.mark.parametrize('percent', [10, 25, 50])
def test_validation_takes_percent_of_each_class(percent):
  """percent% of each class validates (1 for 2+), the rest train."""
  train, val = sequences._validation_rows(LABELS, percent)
  for c, n in enumerate(SIZES):
    want = n * percent // 100 or int(n > 1)
    assert (LABELS[val] == c).sum() == want
    assert (LABELS[train] == c).sum() == n - want


def test_validation_rows_are_disjoint_and_cover_all():
  """Train and validation rows partition the rows, none repeated."""
  train, val = sequences._validation_rows(LABELS, 10)
  assert len(set(train.tolist())) == len(train)
  assert not set(train.tolist()) & set(val.tolist())
  assert sorted([*train, *val]) == list(range(len(LABELS)))


def test_validation_rows_do_not_depend_on_global_randomness():
  """Two calls, under other global seeds, give the same rows."""
  np.random.seed(1)
  first = sequences._validation_rows(LABELS, 10)
  np.random.seed(2)
  np.random.rand(10)
  second = sequences._validation_rows(LABELS, 10)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- classes.


def test_a_class_only_in_test_is_named_in_one_line():
  """ValueError, one line, naming the class test has and train lacks."""
  names = ('cat', 'dog', 'eel')
  with pytest.raises(ValueError) as e:
    sequences._check_classes('toy', [0, 1, 0], [0, 2, 1], names)
  message = str(e.value)
  assert "'eel'" in message and "'cat'" not in message
  assert '\n' not in message and message.startswith('toy:')
  sequences._check_classes('toy', [0, 1, 2], [1, 1], names)  # no error


# -------------------------------------------------------- normalisation.


def test_training_steps_get_mean_0_and_std_1_per_channel():
  """Normalised training steps: numpy mean ~0, std ~1 in each channel."""
  series = _series(40, mean=[5, -3, 0], std=[2, 0.5, 10], seed=0)
  encode, inputs = sequences._normalise_series(series, 20)
  steps = np.concatenate(series)
  np.testing.assert_allclose(inputs['mean'], steps.mean(0), rtol=1e-6)
  np.testing.assert_allclose(inputs['std'], steps.std(0), rtol=1e-6)
  got = _real_steps(encode(series))
  np.testing.assert_allclose(got.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(got.std(0), 1, rtol=1e-4)


def test_padding_stays_exactly_zero():
  """Steps after each series' end are exactly 0, not -mean / std."""
  series = _series(40, mean=[5, -3, 0], std=[2, 0.5, 10], seed=0)
  encode, _ = sequences._normalise_series(series, 25)
  padded = encode(series)
  assert padded.array.shape == (40, 25, 3)
  assert padded.array.dtype == np.float32
  for x, t in zip(padded.array, padded.lengths):
    assert not x[t:].any()
    assert np.abs(x[:t]).sum() > 0


def test_test_series_use_the_training_statistics():
  """Test series are scaled by train's mean and std, not their own."""
  train = _series(40, mean=[5, -3, 0], std=[2, 0.5, 10], seed=0)
  test = _series(30, mean=[9, 0, 4], std=[1, 3, 1], seed=1)
  encode, inputs = sequences._normalise_series(train, 20)
  mean, std = np.float32(inputs['mean']), np.float32(inputs['std'])
  padded = encode(test)
  for x, got, t in zip(test, padded.array, padded.lengths):
    np.testing.assert_allclose(got[:t], (x - mean) / std, rtol=1e-5, atol=1e-5)
  assert np.abs(_real_steps(padded).mean(0)).max() > 1


def test_a_constant_channel_is_not_divided_by_zero():
  """A channel without spread is centred, scaled by 1: no NaN."""
  series = [np.float32([[1.0, 7.0], [3.0, 7.0]]), np.float32([[5.0, 7.0]])]
  encode, inputs = sequences._normalise_series(series, 4)
  assert inputs['std'][1] == 1.0
  padded = encode(series)
  assert np.isfinite(padded.array).all() and not padded.array[..., 1].any()


# ---------------------------------------------------------- real files.


@needs_wheel
def test_japanese_vowels_loads(tmp_path):
  """The official 270 / 370 split, 10% validation, padded and bucketed."""
  d = sequences.load(
    'ucr/JapaneseVowels',
    data_dir=str(tmp_path),
    manual_dir=WHEEL,
    validation_percent=10,
  )
  train, val, test = d.train, d.val, d.test
  assert len(test) == 370 and len(train) + len(val) == 270
  assert np.bincount(val.labels).tolist() == [3] * 9
  max_len = train.images.shape[1]
  assert d.spec.image_shape == (max_len, 12)
  assert d.spec.input_dtype == 'float32' and d.spec.num_classes == 9
  assert d.buckets[-1] == max_len and d.inputs['buckets'] == list(d.buckets)
  for split in (train, val, test):
    assert split.images.dtype == np.float32
    assert split.lengths.min() >= 7 and split.lengths.max() <= 29
    for x, t in zip(split.images, split.lengths):
      assert not x[t:].any()
  # No validation series is also a training series.
  train_rows = {x.tobytes() for x in train.images}
  assert not any(x.tobytes() in train_rows for x in val.images)
