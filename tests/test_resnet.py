"""ResNet and BatchNorm: statistics in train and eval, sizes, registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import config as config_lib
from jaxcls import models
from jaxcls.models import resnet


def resnet_param_count(depth, width=1, in_channels=3, num_classes=10):
  """He et al.'s ResNet-(6n+2) with option-A shortcuts, counted by hand:
  3x3 convolutions without bias, a BatchNorm (scale, offset) after each,
  and a dense head on the last stage's channels."""
  n = (depth - 2) // 6
  c1, c2, c3 = 16 * width, 32 * width, 64 * width
  convs = 9 * in_channels * c1  # stem
  convs += 2 * n * 9 * c1 * c1  # stage 1
  convs += 9 * c1 * c2 + (2 * n - 1) * 9 * c2 * c2  # stage 2
  convs += 9 * c2 * c3 + (2 * n - 1) * 9 * c3 * c3  # stage 3
  norms = 2 * (c1 + 2 * n * (c1 + c2 + c3))
  return convs + norms + c3 * num_classes + num_classes


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def param_shapes(model, input_shape):
  """The parameters' shapes, without computing anything (fast)."""
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(input_shape))[
    'params'
  ]


def images(seed, shape=(8, 28, 28, 1)):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize('depth', [8, 20, 56])
def test_param_count_matches_he_et_al(depth):
  n = count(param_shapes(resnet.ResNet(depth=depth), (1, 32, 32, 3)))
  assert n == resnet_param_count(depth)
  if depth == 20:  # He et al. 2016, Table 6: ResNet-20 has 0.27M.
    assert round(n / 1e6, 2) == 0.27
  if depth == 56:  # ... and ResNet-56 0.85M.
    assert round(n / 1e6, 2) == 0.85


def test_projection_shortcut_adds_two_1x1_convs_with_bn():
  pad = resnet.ResNet(depth=20, shortcut='pad')
  proj = resnet.ResNet(depth=20, shortcut='projection')
  shape = (1, 32, 32, 3)
  extra = count(param_shapes(proj, shape)) - count(param_shapes(pad, shape))
  assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_output_shapes_and_resolution(shape):
  model = resnet.ResNet(depth=20, num_classes=10)
  x = images(0, (4, *shape))
  variables = model.init(jax.random.key(0), x)
  logits, updated = model.apply(
    variables, x, train=True, mutable=['batch_stats']
  )
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert set(updated) == {'batch_stats'}
  # Stride-1 stem, no max-pool: the first stage sees the full image, the
  # last a quarter of each side (28 -> 7, 32 -> 8).
  _, inter = model.apply(variables, x, capture_intermediates=True)
  side = shape[0]
  assert inter['intermediates']['BasicBlock_0']['__call__'][0].shape == (
    4,
    side,
    side,
    16,
  )
  assert inter['intermediates']['BasicBlock_8']['__call__'][0].shape == (
    4,
    side // 4,
    side // 4,
    64,
  )


def test_width_multiplier():
  model = resnet.ResNet(depth=8, width=2)
  assert count(param_shapes(model, (1, 28, 28, 1))) == resnet_param_count(
    8, 2, 1
  )


def test_bad_depth_is_one_clear_error():
  model = resnet.ResNet(depth=21)
  with pytest.raises(ValueError, match='6n\\+2'):
    model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('name', ['resnet', 'cnn'])
def test_batch_stats_update_in_training(name):
  """The stem's running mean after one step is 0.9 * 0 + 0.1 * (the mean of
  the stem convolution's output over batch, height and width), with that
  output recomputed here by lax.conv."""
  config = config_lib.get_config()
  config.update({'model': name, 'resnet_depth': 8, 'batchnorm': True})
  model = models.create_model(config, 10)
  x = images(1) + 0.5
  variables = jax.jit(model.init)(jax.random.key(0), x)
  apply = functools.partial(model.apply, train=True, mutable=['batch_stats'])
  _, updated = jax.jit(apply)(variables, x)
  stem, bn = (
    ('conv_init', 'bn_init') if name == 'resnet' else ('Conv_0', 'BatchNorm_0')
  )
  kernel = variables['params'][stem]['kernel']
  pad = 'SAME' if name == 'cnn' else ((1, 1), (1, 1))
  y = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  y = np.asarray(y, np.float64)
  stats = updated['batch_stats'][bn]
  np.testing.assert_allclose(
    stats['mean'], 0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    stats['var'], 0.9 + 0.1 * y.var(axis=(0, 1, 2)), rtol=1e-4
  )
  # Every BatchNorm moved, not just the first.
  for old, new in zip(
    jax.tree.leaves(variables['batch_stats']),
    jax.tree.leaves(updated['batch_stats']),
  ):
    assert not np.allclose(old, new)


def test_eval_uses_running_averages_and_ignores_the_batch():
  model = resnet.ResNet(depth=8)
  x = images(2)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  # Jitted applies: one compile each instead of one per operation.
  train_apply = jax.jit(
    functools.partial(model.apply, train=True, mutable=['batch_stats'])
  )
  eval_apply = jax.jit(model.apply)
  # Some training steps so that the running averages are not the initial
  # 0 and 1.
  for seed in range(3):
    _, updated = train_apply(variables, images(10 + seed) * 3 + 1)
    variables = {**variables, **updated}
  other = jnp.concatenate([x[:1], images(3)[1:] * 10 - 5])
  eval_a = eval_apply(variables, x)
  eval_b = eval_apply(variables, other)
  np.testing.assert_allclose(eval_a[0], eval_b[0], rtol=1e-5, atol=1e-6)
  # In training mode the same example's output does depend on its batch...
  train_a, _ = train_apply(variables, x)
  train_b, _ = train_apply(variables, other)
  assert not np.allclose(train_a[0], train_b[0], rtol=1e-3)
  # ... and eval mode leaves the statistics as they are.
  frozen_apply = functools.partial(
    model.apply, train=False, mutable=['batch_stats']
  )
  _, frozen = jax.jit(frozen_apply)(variables, x)
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen['batch_stats'],
    variables['batch_stats'],
  )


@pytest.mark.slow  # An option of the model; compiles a ResNet twice.
def test_zero_init_residual_makes_blocks_start_as_identity():
  model = resnet.ResNet(depth=8, zero_init_residual=True)
  x = images(4)
  variables = model.init(jax.random.key(0), x)
  assert not np.any(variables['params']['BasicBlock_0']['BatchNorm_1']['scale'])
  _, inter = model.apply(variables, x, capture_intermediates=True)
  stem = jax.nn.relu(inter['intermediates']['bn_init']['__call__'][0])
  block = inter['intermediates']['BasicBlock_0']['__call__'][0]
  np.testing.assert_allclose(block, stem, atol=1e-6)


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_bfloat16_keeps_statistics_and_logits_in_float32():
  model = resnet.ResNet(depth=8, dtype=jnp.bfloat16)
  x = images(5)
  variables = model.init(jax.random.key(0), x)
  logits, updated = model.apply(
    variables, x, train=True, mutable=['batch_stats']
  )
  assert logits.dtype == jnp.float32
  assert all(
    v.dtype == jnp.float32 for v in jax.tree.leaves((variables, updated))
  )


def test_registry_reads_config_fields_with_defaults():
  config = config_lib.get_config()
  config.model = 'resnet'
  model = models.create_model(config, 10)
  assert (model.depth, model.width, model.shortcut, model.axis_name) == (
    20,
    1.0,
    'pad',
    None,
  )
  config.update(
    {
      'model': 'resnet',
      'resnet_depth': 32,
      'resnet_width': 0.5,
      'resnet_shortcut': 'projection',
      'resnet_zero_init_residual': True,
      'parallel': 'pmap',
    }
  )
  model = models.create_model(config, 100)
  assert (
    model.num_classes,
    model.depth,
    model.width,
    model.shortcut,
    model.zero_init_residual,
    model.axis_name,
  ) == (100, 32, 0.5, 'projection', True, 'batch')


def test_cnn_without_batchnorm_is_unchanged_and_with_it_drops_conv_bias():
  x = jnp.zeros((1, 28, 28, 1))
  plain = models.CNN().init(jax.random.key(0), x)
  assert set(plain) == {'params'}
  assert set(plain['params']) == {'Conv_0', 'Conv_1', 'Dense_0', 'Dense_1'}
  assert 'bias' in plain['params']['Conv_0']
  normed = models.CNN(batchnorm=True).init(jax.random.key(0), x)
  assert set(normed['batch_stats']) == {'BatchNorm_0', 'BatchNorm_1'}
  assert 'bias' not in normed['params']['Conv_0']
  assert normed['params']['BatchNorm_1']['scale'].shape == (32,)
  # Same kernels as without BatchNorm (the names did not shift).
  np.testing.assert_array_equal(
    normed['params']['Conv_1']['kernel'], plain['params']['Conv_1']['kernel']
  )


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_stem_pool_halves_every_stage_and_keeps_the_parameters():
  plain = resnet.ResNet(depth=8, width=2)
  pooled = resnet.ResNet(depth=8, width=2, stem_pool=True)
  x = images(0, (2, 28, 28, 1))
  variables = pooled.init(jax.random.key(0), x)
  # Pooling has no parameters: the same tree as the plain ResNet's.
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
    jnp.shape, plain.init(jax.random.key(0), x)
  )
  _, inter = pooled.apply(variables, x, capture_intermediates=True)
  blocks = inter['intermediates']
  # 28 -> 14 after the stem, then 7 and 4 (stride 2 with padding 1).
  assert blocks['BasicBlock_0']['__call__'][0].shape == (2, 14, 14, 32)
  assert blocks['BasicBlock_2']['__call__'][0].shape == (2, 4, 4, 128)
  # The same weights without the pool give a different function.
  assert not np.allclose(
    pooled.apply(variables, x), plain.apply(variables, x), atol=1e-3
  )
