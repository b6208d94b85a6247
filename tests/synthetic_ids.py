"""A synthetic token-id dataset for population tests on sequences: small
enough to train in seconds, bucketed like a real text dataset."""

import numpy as np

from jaxcls import data


def id_split(n: int, seed: int, width: int = 24) -> data.Split:
  """Token ids (2..63) of random lengths, zero after each end; the label
  is the first id's parity."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, width + 1, n).astype(np.int32)
  ids = rng.integers(2, 64, (n, width)).astype(np.int32)
  ids[np.arange(width)[None, :] >= lengths[:, None]] = 0
  return data.Split(ids, (ids[:, 0] % 2).astype(np.int32), lengths)


def id_data(width: int = 24, num_buckets: int = 3) -> data.Data:
  """256 training, 64 validation and 64 test sequences of ids, even or
  odd, with ``num_buckets`` padded lengths from the training lengths."""
  train_split = id_split(256, 0, width)
  return data.Data(
    [train_split],
    id_split(64, 1, width),
    id_split(64, 2, width),
    data.DatasetSpec((width,), 2, False, ('even', 'odd'), 'int32'),
    source='synthetic',
    buckets=data.buckets.bucket_lengths(
      train_split.lengths, width, num_buckets
    ),
  )
