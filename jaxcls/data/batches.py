"""Batches by index, and the on-device normalisation and augmentation.

The order of examples is a pure function of ``(seed, epoch)`` (see
:func:`epoch_permutation`), so any step's batch can be recomputed after a
restart without saving iterator state.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.data import specs
from jaxcls.data.buckets import bucket_for


def epoch_permutation(
  seed: int, epoch: int, n: int, shard: int = 0
) -> np.ndarray:
  """The order of a shard's ``n`` examples in ``epoch``: a function of
  (seed, epoch, shard) only, so a resumed run sees the same batches."""
  return np.random.default_rng([seed, epoch, shard]).permutation(n)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5`` (article)."""
  return (images.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def random_crop_flip(
  rng: jax.Array, images: jax.Array, padding: int = 4
) -> jax.Array:
  """Random crop after zero-padding by ``padding``, and random h-flip.

  The same augmentation as torchvision's ``RandomCrop(32, padding=4)`` and
  ``RandomHorizontalFlip()`` in the article, done on the device per example.
  """
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(rng)
  padded = jnp.pad(
    images, ((0, 0), (padding, padding), (padding, padding), (0, 0))
  )
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


def train_batch(
  split: specs.Split, order: np.ndarray, index: int, batch_size: int
) -> dict[str, np.ndarray]:
  """Batch ``index`` of an epoch whose example order is ``order``."""
  rows = order[index * batch_size : (index + 1) * batch_size]
  return {'image': split.images[rows], 'label': split.labels[rows]}


def sharded_train_batch(
  shards: list[specs.Split],
  orders: list[np.ndarray],
  index: int,
  per_shard: int,
) -> dict[str, np.ndarray]:
  """Batch ``index`` from each shard (in its own order), concatenated."""
  parts = [train_batch(s, o, index, per_shard) for s, o in zip(shards, orders)]
  if len(parts) == 1:
    return parts[0]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_batches(
  split: specs.Split,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  buckets: tuple[int, ...] = (),
):
  """Yields this process's rows of each global batch, padded, with a mask.

  The last batch is padded to ``batch_size`` with copies of example 0 whose
  ``mask`` is 0, so every example is counted exactly once and every batch has
  the same shape (one compilation). With several processes, each yields its
  own contiguous share of the rows of every global batch. Sequences come
  with their ``length``, each batch cut to the bucket of its longest.
  """
  local = batch_size // process_count
  n = len(split)
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    width = _width(split, rows[rows < n], buckets)
    rows = rows[process_index * local : (process_index + 1) * local]
    mask = rows < n
    rows = np.where(mask, rows, 0)
    batch = {
      'image': split.images[rows, :width],
      'label': split.labels[rows],
      'mask': mask.astype(np.float32),
    }
    if split.lengths is not None:  # Padding rows: 1 step, within the width.
      batch['length'] = np.where(mask, split.lengths[rows], 1)
    yield batch


def _width(split: specs.Split, rows: np.ndarray, buckets) -> int | None:
  """The padded length of a batch of ``rows`` (None: the whole width)."""
  if split.lengths is None or not buckets:
    return None
  return bucket_for(int(split.lengths[rows].max()), buckets)
