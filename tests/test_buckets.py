"""Length buckets: the padded lengths, length-sorted batches, eval batches.

Pure numpy on synthetic lengths (jaxcls/data/buckets.py and the buckets of
jaxcls/data/batches.py's ``eval_batches``).
"""

import numpy as np
import pytest

from jaxcls.data import batches, specs
from jaxcls.data import buckets as buckets_lib


def _lengths(n=4096, high=200, seed=0):
  """``n`` random lengths, uniform in 1..high."""
  return np.random.default_rng(seed).integers(1, high + 1, n)


def _spread(lengths, rows):
  """The mean, over batches, of the longest minus the shortest length."""
  per_batch = lengths[rows]
  return float((per_batch.max(1) - per_batch.min(1)).mean())


def _sequence_split(n=70, steps=30, channels=2, seed=0):
  """``n`` series whose steps hold ``row + 1`` up to a random length."""
  lengths = np.random.default_rng(seed).integers(1, steps + 1, n)
  images = np.zeros((n, steps, channels), np.float32)
  for i, length in enumerate(lengths):
    images[i, :length] = i + 1
  labels = np.arange(n, dtype=np.int32)
  return specs.Split(images, labels, lengths.astype(np.int32))


# ------------------------------------------------------------ the buckets.


@pytest.mark.parametrize('num_buckets', [1, 2, 3, 4, 7, 50])
@pytest.mark.parametrize('max_len', [200, 203])
def test_bucket_lengths_are_few_increasing_multiples(num_buckets, max_len):
  """At most num_buckets increasing multiples of 8, the last max_len."""
  got = buckets_lib.bucket_lengths(_lengths(), max_len, num_buckets)
  assert got[-1] == max_len and 1 <= len(got) <= num_buckets
  assert list(got) == sorted(set(got))
  assert all(b % buckets_lib.MULTIPLE == 0 for b in got[:-1])
  assert all(isinstance(b, int) for b in got)


def test_bucket_lengths_sit_at_the_quantiles():
  """Quartile buckets of uniform lengths: each holds its share of lengths."""
  lengths = _lengths()
  got = buckets_lib.bucket_lengths(lengths, 203, 4)
  assert got == (56, 104, 152, 203)
  for k, b in enumerate(got[:-1], 1):
    assert (lengths <= b).mean() >= k / 4


def test_one_bucket_is_max_len_and_zero_is_refused():
  """num_buckets=1 gives (max_len,); 0 or fewer raise ValueError."""
  assert buckets_lib.bucket_lengths(_lengths(), 200, 1) == (200,)
  assert buckets_lib.bucket_lengths(np.array([3, 3]), 5, 4) == (5,)
  for bad in (0, -1):
    with pytest.raises(ValueError, match='num_buckets must be >= 1'):
      buckets_lib.bucket_lengths(_lengths(), 200, bad)


def test_bucket_for_is_the_shortest_bucket_that_holds():
  """bucket_for equals a plain loop's shortest bucket >= longest."""
  rng = np.random.default_rng(1)
  for _ in range(200):
    size = int(rng.integers(1, 6))
    buckets = tuple(sorted(set(rng.integers(1, 300, size).tolist())))
    tries = [*rng.integers(1, buckets[-1] + 1, 30).tolist(), *buckets]
    for longest in tries:
      want = next(b for b in buckets if b >= longest)
      assert buckets_lib.bucket_for(int(longest), buckets) == want


# ------------------------------------------------------ sorted batches.


@pytest.mark.parametrize('n, batch_size, window', [(1000, 32, 4), (97, 8, 32)])
def test_sorted_batches_lose_and_repeat_nothing(n, batch_size, window):
  """(len // B, B) int32 rows: a permutation of order's full batches."""
  order = np.random.default_rng(2).permutation(n)
  lengths = _lengths(n)
  rng = np.random.default_rng(0)
  rows = buckets_lib.sorted_batches(order, lengths, batch_size, rng, window)
  steps = n // batch_size
  assert rows.shape == (steps, batch_size) and rows.dtype == np.int32
  np.testing.assert_array_equal(
    np.sort(rows.ravel()), np.sort(order[: steps * batch_size])
  )


def test_sorted_batches_are_a_function_of_the_seed():
  """The same seed gives the same batches; another seed other batches."""
  order, lengths = np.random.default_rng(3).permutation(4096), _lengths()

  def rows(seed):
    rng = np.random.default_rng(seed)
    return buckets_lib.sorted_batches(order, lengths, 32, rng)

  np.testing.assert_array_equal(rows(7), rows(7))
  assert not np.array_equal(rows(7), rows(8))


def test_sorted_batches_hold_similar_lengths():
  """Sorted batches' length spread is under a tenth of unsorted ones'."""
  order, lengths = np.random.default_rng(3).permutation(4096), _lengths()
  rng = np.random.default_rng(0)
  rows = buckets_lib.sorted_batches(order, lengths, 32, rng)
  unsorted = order[: rows.size].reshape(rows.shape)
  assert _spread(lengths, rows) < 0.1 * _spread(lengths, unsorted)


def test_sorted_batches_pad_less():
  """Sorted batches pad less than half as much as unsorted ones."""
  order, lengths = np.random.default_rng(3).permutation(4096), _lengths()
  buckets = buckets_lib.bucket_lengths(lengths, 200, 4)
  rng = np.random.default_rng(0)
  rows = buckets_lib.sorted_batches(order, lengths, 32, rng)
  unsorted = order[: rows.size].reshape(rows.shape)
  sorted_share = buckets_lib.padding_share(lengths, rows, buckets)
  unsorted_share = buckets_lib.padding_share(lengths, unsorted, buckets)
  assert 0 < sorted_share < 0.5 * unsorted_share


def test_padding_share_by_hand():
  """Batches [3, 5] -> 8 and [9, 2] -> 16: 1 - 19 / 48 padded; none: 0."""
  lengths = np.array([3, 5, 9, 2])
  rows = np.array([[0, 1], [2, 3]])
  got = buckets_lib.padding_share(lengths, rows, (8, 16))
  assert got == pytest.approx(1 - 19 / 48)
  assert buckets_lib.padding_share(lengths, rows, (9,)) == pytest.approx(
    1 - 19 / 36
  )
  assert buckets_lib.padding_share(lengths, rows[:0], (8,)) == 0.0


# ------------------------------------------------------- eval batches.


def test_eval_batches_cut_each_batch_to_its_bucket():
  """Every example once; each batch as wide as its real rows' bucket."""
  split, buckets = _sequence_split(), (8, 16, 24, 30)
  seen = []
  for batch in batches.eval_batches(split, 16, buckets=buckets):
    real = batch['mask'] == 1
    labels = batch['label'][real]
    width = buckets_lib.bucket_for(int(split.lengths[labels].max()), buckets)
    assert batch['image'].shape == (16, width, 2)
    np.testing.assert_array_equal(batch['length'][real], split.lengths[labels])
    np.testing.assert_array_equal(
      batch['image'][real], split.images[labels, :width]
    )
    seen.extend(labels.tolist())
  assert sorted(seen) == list(range(len(split)))


def test_eval_batches_without_buckets_keep_the_whole_width():
  """No buckets: every batch is max_len wide, still with its lengths."""
  split = _sequence_split()
  for batch in batches.eval_batches(split, 16):
    assert batch['image'].shape[1] == 30
    real = batch['mask'] == 1
    np.testing.assert_array_equal(
      batch['length'][real], split.lengths[batch['label'][real]]
    )


def test_eval_batches_of_two_processes_agree_on_the_width():
  """Two processes' rows of a global batch have the same bucket width."""
  split, buckets = _sequence_split(), (8, 16, 24, 30)
  parts = [list(batches.eval_batches(split, 16, i, 2, buckets)) for i in (0, 1)]
  seen = []
  for a, b in zip(*parts):
    assert a['image'].shape == b['image'].shape
    seen += [*a['label'][a['mask'] == 1], *b['label'][b['mask'] == 1]]
  assert sorted(seen) == list(range(len(split)))


def test_eval_batches_padding_rows_fit_the_width():
  """Every row's 'length', padding rows' too, is at most the batch width."""
  split, buckets = _sequence_split(), (8, 16, 24, 30)
  split.lengths[0] = 30  # example 0 is long, the last batch's rows short
  split.lengths[64:] = 3
  for batch in batches.eval_batches(split, 16, buckets=buckets):
    assert batch['length'].max() <= batch['image'].shape[1]
