"""A small ResNet for 28x28 and 32x32 images (He et al. 2016, CIFAR variant).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR
2016, section 4.2: a 3x3 stem convolution with 16 filters (stride 1, no
max-pool, so the image keeps its resolution), three stages of ``n`` basic
blocks with 16, 32 and 64 filters (the second and third start with a stride-2
block: 32 -> 16 -> 8, or 28 -> 14 -> 7), global average pooling and a dense
layer: ``6n + 2`` weighted layers. ResNet-20 (``n = 3``) has 0.27M parameters,
ResNet-56 (``n = 9``) 0.85M. ``stem_pool=True`` departs from the paper on
purpose, for CPU budgets (:class:`ResNet`).

Apply with ``train=True`` and ``mutable=['batch_stats']``; it returns
``(logits, {'batch_stats': new_stats})``. With ``train=False`` the running
averages are used, so an example's output does not depend on its batch.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.ops import kernels

# torchvision's ResNet initialisation (He et al. 2015, fan_out, for ReLU).
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

SHORTCUTS = ('pad', 'projection')


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with BatchNorm and a shortcut (He et al. 2016).

  ResNet V1 as in flax's ``examples/imagenet/models.py``: conv -> BN -> ReLU,
  conv -> BN, add the shortcut, ReLU; convolutions without bias, BatchNorm
  momentum 0.9 and epsilon 1e-5. Where a stride-2 block changes the width,
  the shortcut is He et al.'s option A for CIFAR (``'pad'``: subsample 2x2
  and zero-pad the new channels; no parameters) or option B
  (``'projection'``: 1x1 convolution + BN, as flax's imagenet example does).
  """

  filters: int
  strides: int = 1
  shortcut: str = 'pad'
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv: Any = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(
      self.conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init
    )
    # Statistics and normalisation in float32, also for bfloat16 convolutions.
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=jnp.float32,
      axis_name=self.axis_name,
    )
    # Explicit padding 1 (PyTorch's, He et al.'s): 'SAME' with stride 2
    # would pad only the bottom/right of an even-sized image.
    y = conv(self.filters, (3, 3), self.strides, padding=((1, 1), (1, 1)))(x)
    y = nn.relu(norm()(y))
    y = conv(self.filters, (3, 3), padding=((1, 1), (1, 1)))(y)
    # Zero-init of the last scale makes each block start as the identity
    # (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 5.1).
    y = norm(
      scale_init=(
        nn.initializers.zeros_init()
        if self.zero_init_residual
        else nn.initializers.ones_init()
      )
    )(y)
    residual = x
    if residual.shape != y.shape:
      if self.shortcut == 'projection':
        residual = conv(self.filters, (1, 1), self.strides, name='conv_proj')(
          residual
        )
        residual = norm(name='norm_proj')(residual)
      else:  # 'pad': option A, parameter-free.
        residual = residual[:, :: self.strides, :: self.strides, :]
        extra = self.filters - residual.shape[-1]
        residual = jnp.pad(
          residual, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))
        )
    return nn.relu(residual.astype(jnp.float32) + y)


class ResNet(nn.Module):
  """ResNet-(6n+2) for small images: ``depth`` 20, 32, 44, 56, 110, ...

  ``width`` multiplies the stage widths 16, 32, 64 (e.g. 0.5 or 2; each is
  rounded and at least 1). ``stem_pool`` adds a 2x2 max pool right after the
  stem convolution (before its BatchNorm), as ImageNet ResNets pool after
  their stem: every stage then runs at half the resolution (28 -> 14, 7, 4),
  about 3x cheaper per image on this CPU, which buys width instead.
  ``dtype`` is the compute dtype of the convolutions and the dense layer;
  parameters, BatchNorm and the logits stay float32.
  """

  num_classes: int = 10
  depth: int = 20
  width: float = 1.0
  shortcut: str = 'pad'
  zero_init_residual: bool = False
  stem_pool: bool = False
  dtype: Any = jnp.float32
  # BatchNorm averages its batch statistics over this pmap/shard_map axis.
  # Under jit with a sharded batch XLA already computes them over the global
  # batch (tests/test_batchnorm_parallel.py), and no axis is named.
  axis_name: str | None = None
  conv: Any = nn.Conv

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(
        f'resnet depth must be 6n+2 with n >= 1 (8, 14, 20, '
        f'32, 44, 56, 110); got {self.depth}'
      )
    if self.shortcut not in SHORTCUTS:
      raise ValueError(
        f'unknown resnet shortcut {self.shortcut!r}; choose '
        f'one of {list(SHORTCUTS)}'
      )
    blocks_per_stage = (self.depth - 2) // 6
    widths = [max(1, round(f * self.width)) for f in (16, 32, 64)]
    # The stem has 9 * C_in terms per output, so on XLA:CPU kernels.Conv
    # computes it as shifted multiply-adds (faster than Eigen's kernel; the
    # same parameters and function as nn.Conv).
    stem_conv = kernels.Conv if self.conv is nn.Conv else self.conv
    x = stem_conv(
      widths[0],
      (3, 3),
      padding=((1, 1), (1, 1)),
      use_bias=False,
      dtype=self.dtype,
      kernel_init=_conv_init,
      name='conv_init',
    )(x.astype(self.dtype))
    if self.stem_pool:
      # Pooled before BatchNorm and ReLU, so their passes (and gradients)
      # run at a quarter of the stem's resolution: 10-13% of the step.
      x = kernels.max_pool_2x2(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=jnp.float32,
      axis_name=self.axis_name,
      name='bn_init',
    )(x)
    x = nn.relu(x)
    for stage, filters in enumerate(widths):
      for block in range(blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(
          filters,
          strides,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
          dtype=self.dtype,
          axis_name=self.axis_name,
          conv=self.conv,
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    # Logits in float32 so the loss is computed at full precision.
    return x.astype(jnp.float32)


# The axis name jaxcls.training.parallel.pmap_steps maps the train step over.
PMAP_AXIS = 'batch'


def batchnorm_axis_name(config) -> str | None:
  """The axis BatchNorm averages its statistics over: the pmap axis when
  ``config.parallel == 'pmap'``, else none (under jit, XLA computes them over
  the global batch by itself, and there is no named axis to reduce over)."""
  return PMAP_AXIS if config.parallel == 'pmap' else None


def build_resnet(config, num_classes: int) -> ResNet:
  """``models.MODELS['resnet']``, from the config's ``resnet_*`` fields
  (defaults: ResNet-20 of He et al. with option-A shortcuts)."""
  return ResNet(
    num_classes=num_classes,
    depth=config.resnet_depth,
    width=config.resnet_width,
    shortcut=config.resnet_shortcut,
    zero_init_residual=config.resnet_zero_init_residual,
    stem_pool=config.resnet_stem_pool,
    dtype=jnp.dtype(config.compute_dtype),
    axis_name=batchnorm_axis_name(config),
  )
