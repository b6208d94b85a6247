"""The article's CNN (or an LSTM/GRU) on your own folder of images.

Run:  python -m experiments.image_folder --config.manual_dir=PATH [--workdir=W]
      python -m experiments.image_folder --config.manual_dir=PATH \
        --config.model=lstm
      python -m experiments.image_folder --config.manual_dir=PATH \
        --config.image_size=64 --config.channels=3

PATH holds one folder of PNG/JPEG images per class (``PATH/cat/*.jpg``,
``PATH/dog/*.png``), or ``PATH/train/<class>/...`` with optional
``PATH/val/<class>/...`` and ``PATH/test/<class>/...``. The class names are
the folder names. Without ``test``, 10% of each class is held out as the test
split (fixed seed 0); without ``val``, the last 10% of the prepared train
split is the validation split (``validation_percent``). Every image is
centre-cropped and resized to ``image_size`` squared, in ``channels`` 1 or 3;
by default the median shorter side (clipped to 8..64) and grayscale only if
every image is. jaxcls/image_folder.py has the exact rules.

The folder is prepared once as a TFDS dataset in ``<data_dir>/
image_folder_data`` (a changed folder is prepared again), then trained like
the tutorial datasets: ``W/results.json`` has the test accuracy of the
checkpoint with the best validation accuracy, and ``experiments.report`` and
``experiments.predict`` show the folder names as the classes. An empty class
folder, an unreadable image or a single class stops with one ``error:`` line
naming it.

What to expect: from 3 Fashion-MNIST classes exported as PNGs (300 per class,
measured on a 2-core CPU, see README) the CNN gets well above the 33% of
chance within 10 epochs of a few seconds each; photos need more images per
class and a larger ``image_size``.
"""

from jaxcls import config
from jaxcls.commands import cli


def get_config():
  c = config.get_config()
  c.dataset = 'image_folder'
  c.image_size = 0  # 0: the median shorter side of the images, in 8..64
  c.channels = 0  # 0: 1 if every image is grayscale, else 3
  c.num_epochs = 10
  c.batch_size = 32  # small folders: more steps per epoch
  c.lr_schedule = 'warmup_cosine'
  c.warmup_epochs = 1.0
  # --config.model=lstm (or gru, rnn) reads each image row by row:
  # image_size steps of image_size * channels values.
  return c


if __name__ == '__main__':
  cli.run(get_config, 'image_folder')
