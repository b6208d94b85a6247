"""The article's CNN on Fashion-MNIST, offline from Debian's IDX files.

Run:  python -m experiments.fashion_mnist [--config.num_epochs=3] [--workdir=W]
Tiny: python -m experiments.fashion_mnist --config.train_examples=2000 \
        --config.num_epochs=1

Defaults: the article's CNN, Adam at 1e-3, batch 64, plus one change the
article does not make: the learning rate warms up over the first epoch and
then decays to zero on a cosine, over 15 epochs. The best epoch by
validation accuracy is the one scored on test. What to expect, and the
article's constant rate beside it (``--config.lr_schedule=constant``): the
end of ``--help``, from the README's results table.

Data: a prepared TFDS `fashion_mnist` if there is one; else Fashion-MNIST
files prepared once as the TFDS dataset `local_files/fashion_mnist`, from
`--config.manual_dir` (the four IDX files, gzipped or not, or
fashion-mnist.npz), `<data_dir>/downloads/manual/fashion_mnist`,
`$JAXCLS_FASHION_MNIST_DIR` or `/usr/share/datasets/fashion-mnist`
(`apt-get install dataset-fashion-mnist`), in that order; else a TFDS
download.
"""

from experiments import results
from jaxcls import config
from jaxcls.commands import cli


def get_config():
  c = config.get_config()
  c.dataset = 'fashion_mnist'
  c.num_epochs = 15
  c.lr_schedule = 'warmup_cosine'  # +1.2 points over the article's constant
  c.warmup_epochs = 1.0
  return c


if __name__ == '__main__':
  cli.run(
    get_config, 'fashion_mnist', measured=results.measured('fashion_mnist')
  )
