"""A small ResNet with BatchNorm on Fashion-MNIST: the best this CPU does in
about 15 minutes of training.

Run:  python -m experiments.fashion_mnist_resnet [--workdir=W]
Tiny: python -m experiments.fashion_mnist_resnet --config.train_examples=2000 \
        --config.num_epochs=1

The model is He et al. (2016)'s CIFAR ResNet at depth 8 (6n+2 with n=1: a
3x3 stem, three stages of one basic block, global average pooling), at width
2 (32/64/128 channels; 297k parameters), with BatchNorm after every
convolution (jaxcls/resnet.py). One change to He et al.'s shape, for this
CPU: ``resnet_stem_pool`` puts a 2x2 max pool after the stem convolution
(before its BatchNorm), as ImageNet ResNets pool after their stem, so the
stages run at 14, 7 and 4 instead of 28, 14 and 7. That makes ResNet-8 3x
cheaper per image here, and width 2 with the pool costs less than width 1
without it (benchmarks/NOTES.md, round 5).

Recipe (jaxcls/techniques.py for the regularisers): SGD with Nesterov
momentum 0.9, peak learning rate 0.05 after half an epoch of warmup, cosine
to zero over 24 epochs; weight decay 5e-4 on kernels; random crop (padding 2)
and horizontal flip; label smoothing 0.1; an EMA of the weights (0.999) that
is validated beside them and kept as the best model when better; flip
test-time augmentation for validation and test.

24 epochs, because 20 and 22 fell short of the 93.5% this experiment aims
at (benchmarks/NOTES.md, round 5). What to expect: the end of ``--help``,
from the README's results table.
"""

from experiments import fashion_mnist, results
from jaxcls.commands import cli


def get_config():
  c = fashion_mnist.get_config()
  c.model = 'resnet'
  c.resnet_depth = 8
  c.resnet_width = 2.0
  c.resnet_stem_pool = True
  c.num_epochs = 24
  c.batch_size = 128
  c.optimizer = 'nesterov'
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'warmup_cosine'
  c.warmup_epochs = 0.5
  c.augment = 'crop_flip'
  c.crop_padding = 2
  c.label_smoothing = 0.1
  c.ema_decay = 0.999
  c.flip_tta = True
  return c


if __name__ == '__main__':
  cli.run(
    get_config,
    'fashion_mnist_resnet',
    measured=results.measured('fashion_mnist_resnet'),
  )
