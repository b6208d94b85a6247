"""Writes a dataset's train/test arrays to one .npz file, for machines
without TensorFlow/TFDS (e.g. a GPU box for benchmarks/gpu.sh).

  python -m benchmarks.export_arrays --dataset=fashion_mnist --out=fm.npz

The file holds uint8 ``train_images``/``test_images`` (N, H, W, C) and int32
``train_labels``/``test_labels``: the same training split as jaxcls's
(TFDS train[:90%]) and the test split. Read it with
``python -m benchmarks.train_speed --data_npz=fm.npz``.
"""

import argparse

import numpy as np


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dataset', default='fashion_mnist')
  p.add_argument('--out', required=True)
  args = p.parse_args(argv)
  from jaxcls import data

  ds = data.load(args.dataset)
  np.savez(
    args.out,
    train_images=ds.train.images,
    train_labels=ds.train.labels,
    test_images=ds.test.images,
    test_labels=ds.test.labels,
  )
  print(
    f'wrote {args.out}: {len(ds.train)} train, {len(ds.test)} test '
    f'{ds.spec.image_shape} images from {ds.source}'
  )


if __name__ == '__main__':
  main()
