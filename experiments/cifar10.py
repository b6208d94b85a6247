"""The article's CNN on CIFAR-10 (TFDS ``cifar10``: 50k train, 10k test).

Run:  python -m experiments.cifar10 [--config.num_epochs=3] [--workdir=W]
Tiny: python -m experiments.cifar10 --config.train_examples=2000 \
        --config.num_epochs=1

Training uses the article's augmentation: random crop with 4-pixel padding
and a random horizontal flip, done on the device. (The article says CIFAR-10
has 600k/100k images; it has 50k training and 10k test images.) Needs TFDS's
prepared ``cifar10`` (downloaded on first use where there is network). Not
measured here (no CIFAR-10 offline); a CNN this small typically lands in the
high 60s to low 70s percent.
"""

from jaxcls import cli, config


def get_config():
  c = config.get_config()
  c.dataset = 'cifar10'
  c.num_epochs = 30
  return c


if __name__ == '__main__':
  cli.run(get_config, 'cifar10')
