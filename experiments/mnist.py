"""The article's CNN on MNIST (TFDS ``mnist``).

Run:  python -m experiments.mnist [--config.num_epochs=3] [--workdir=W]
Tiny: python -m experiments.mnist --config.train_examples=2000 \
        --config.num_epochs=1

Data: TFDS's prepared ``mnist`` if there is one; else the MNIST files you
have, prepared once as the TFDS dataset ``local_files/mnist``:

  python -m experiments.mnist --config.manual_dir=~/data/MNIST/raw

(torchvision's raw/ folder as it is, the four IDX files gzipped or not, or a
folder with Keras's mnist.npz; without --config.manual_dir,
<data_dir>/downloads/manual/mnist is searched); else a TFDS download.
Offline and without files, it fails within seconds naming the files that
would do and where to put them. The article's CNN usually reaches about 99%
test accuracy in a few epochs; this was not measured here (no MNIST
offline), see README.
"""

from jaxcls import config
from jaxcls.commands import cli


def get_config():
  c = config.get_config()
  c.dataset = 'mnist'
  c.num_epochs = 10
  return c


if __name__ == '__main__':
  cli.run(get_config, 'mnist')
