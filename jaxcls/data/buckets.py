"""Batching sequences by length: a fixed, small set of padded lengths.

A batch of sequences is padded to the shortest *bucket* that holds its
longest sequence, so jit compiles one program per bucket and no more. The
buckets are fixed before training, from the training lengths alone:
:func:`bucket_lengths` puts their edges at length quantiles. To make batches
of similar lengths, :func:`sorted_batches` sorts each window of a few
batches of the epoch's order by length, then shuffles the batches; every
step is still a function of (seed, epoch), so a resumed run sees the same
batches (the trick of torchtext's BucketIterator and of tf.data's
``bucket_by_sequence_length``, made stateless).
"""

import numpy as np

MULTIPLE = 8  # bucket lengths are multiples of this (vector-friendly)
WINDOW = 32  # batches sorted together: similar lengths, yet well mixed


def bucket_lengths(
  lengths: np.ndarray, max_len: int, num_buckets: int
) -> tuple[int, ...]:
  """At most ``num_buckets`` padded lengths, the last ``max_len``.

  Args:
    lengths: the training sequences' lengths (already at most ``max_len``).
    max_len: the width of the padded arrays: the longest bucket.
    num_buckets: how many to aim for (1: every batch is ``max_len`` long).

  Returns:
    Increasing lengths: quantiles ``k / num_buckets`` of ``lengths``,
    rounded up to a multiple of :data:`MULTIPLE`, and ``max_len``.
  """
  if num_buckets < 1:
    raise ValueError(f'num_buckets must be >= 1, not {num_buckets}')
  qs = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets)
  edges = np.ceil(np.maximum(qs, 1) / MULTIPLE).astype(int) * MULTIPLE
  return tuple(sorted({*(int(e) for e in edges if e < max_len), max_len}))


def bucket_for(longest: int, buckets: tuple[int, ...]) -> int:
  """The shortest bucket of at least ``longest`` steps."""
  i = int(np.searchsorted(buckets, longest))
  return buckets[min(i, len(buckets) - 1)]


def sorted_batches(
  order: np.ndarray,
  lengths: np.ndarray,
  batch_size: int,
  rng: np.random.Generator,
  window: int = WINDOW,
) -> np.ndarray:
  """``(steps, batch_size)`` rows: ``order``'s full batches, each window of
  ``window`` batches sorted by length (stable), the batches then shuffled
  by ``rng``. The last partial batch is dropped."""
  steps = len(order) // batch_size
  rows = np.asarray(order[: steps * batch_size])
  span = window * batch_size
  parts = [
    chunk[np.argsort(lengths[chunk], kind='stable')]
    for chunk in np.split(rows, range(span, len(rows), span))
  ]
  batches = np.concatenate(parts).reshape(steps, batch_size)
  return batches[rng.permutation(steps)].astype(np.int32)


def padding_share(lengths: np.ndarray, rows: np.ndarray, buckets) -> float:
  """The share of padded steps in the batches ``rows`` (steps, batch)."""
  per_batch = lengths[rows]
  padded = np.array([bucket_for(int(b.max()), buckets) for b in per_batch])
  total = padded.sum() * rows.shape[1]
  return float(1 - per_batch.sum() / total) if total else 0.0
