"""ResNet-20 with BatchNorm on CIFAR-10, He et al. (2016)'s recipe.

Run:  python -m experiments.cifar10_resnet --config.manual_dir=DIR
      (or with a prepared TFDS cifar10 in --config.data_dir)

Not measured here: CIFAR-10 cannot be had on this machine. He et al. report
91.25% test accuracy for ResNet-20 with this recipe (SGD momentum 0.9, batch
128, learning rate 0.1, weight decay 1e-4, random crop (padding 4) and flip,
64k iterations, about 164 epochs). This config is shorter (60 epochs with a
cosine schedule, plus label smoothing and an EMA), which the literature puts
at roughly 91-92%; expect a few hours on a GPU-less laptop and minutes on one
GPU.
"""

from experiments import cifar10
from jaxcls.commands import cli


def get_config():
  c = cifar10.get_config()
  c.model = 'resnet'
  c.resnet_depth = 20
  c.num_epochs = 60
  c.batch_size = 128
  c.optimizer = 'nesterov'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.lr_schedule = 'warmup_cosine'
  c.warmup_epochs = 1.0
  c.augment = 'crop_flip'
  c.crop_padding = 4
  c.label_smoothing = 0.1
  c.ema_decay = 0.999
  c.flip_tta = True
  return c


if __name__ == '__main__':
  cli.run(get_config, 'cifar10_resnet')
