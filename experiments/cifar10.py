"""The article's CNN on CIFAR-10 (TFDS ``cifar10``: 50k train, 10k test).

Run:  python -m experiments.cifar10 [--config.num_epochs=3] [--workdir=W]
Tiny: python -m experiments.cifar10 --config.train_examples=2000 \
        --config.num_epochs=1

Training uses the article's augmentation: random crop with 4-pixel padding
and a random horizontal flip, done on the device. (The article says CIFAR-10
has 600k/100k images; it has 50k training and 10k test images.)

Data: TFDS's prepared ``cifar10`` if there is one; else the CIFAR-10 files
you have, prepared once as the TFDS dataset ``local_files/cifar10``:

  python -m experiments.cifar10 --config.manual_dir=~/data

where ~/data holds cifar-10-python.tar.gz, its extracted cifar-10-batches-py/
folder, or cifar-10-binary.tar.gz (without --config.manual_dir,
<data_dir>/downloads/manual/cifar10 is searched); else a TFDS download. Not
measured here (no CIFAR-10 offline); a CNN this small typically lands in the
high 60s to low 70s percent.
"""

from jaxcls import config
from jaxcls.commands import cli


def get_config():
  c = config.get_config()
  c.dataset = 'cifar10'
  c.num_epochs = 30
  return c


if __name__ == '__main__':
  cli.run(get_config, 'cifar10')
