"""The article's CNN on Fashion-MNIST, offline from Debian's IDX files.

Run:  python -m experiments.fashion_mnist [--config.num_epochs=3] [--workdir=W]
Tiny: python -m experiments.fashion_mnist --config.train_examples=2000 \
        --config.num_epochs=1

Expect about 91-92% test accuracy with the defaults (see README for the
measured number and time on a 2-core CPU). Data: a prepared TFDS
`fashion_mnist` if there is one, else `/usr/share/datasets/fashion-mnist`
(`apt-get install dataset-fashion-mnist`), else a TFDS download.
"""

from jaxcls import cli, config


def get_config():
  c = config.get_config()
  c.dataset = 'fashion_mnist'
  c.num_epochs = 15
  return c


if __name__ == '__main__':
  cli.run(get_config, 'fashion_mnist')
