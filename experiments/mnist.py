"""The article's CNN on MNIST (TFDS ``mnist``).

Run:  python -m experiments.mnist [--config.num_epochs=3] [--workdir=W]
Tiny: python -m experiments.mnist --config.train_examples=2000 \
        --config.num_epochs=1

Needs TFDS's prepared ``mnist`` (downloaded on first use where there is
network; offline, it fails within seconds saying how to provide it). The
article's CNN usually reaches about 99% test accuracy in a few epochs; this
was not measured here (no MNIST offline), see README.
"""

from jaxcls import cli, config


def get_config():
  c = config.get_config()
  c.dataset = 'mnist'
  c.num_epochs = 10
  return c


if __name__ == '__main__':
  cli.run(get_config, 'mnist')
