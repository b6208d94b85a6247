"""The article's CNN: shapes, parameter count, options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import config as config_lib
from jaxcls import models


def article_param_count(h, w, c, num_classes=10):
  """The article's PyTorch CNN's parameters, counted by hand."""
  conv1 = 3 * 3 * c * 16 + 16
  conv2 = 3 * 3 * 16 * 32 + 32
  fc1 = (h // 4) * (w // 4) * 32 * 128 + 128
  fc2 = 128 * num_classes + num_classes
  return conv1 + conv2 + fc1 + fc2


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_shapes_and_parameter_count(shape):
  model = models.CNN(num_classes=10)
  x = jnp.zeros((5, *shape))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (5, 10)
  count = sum(p.size for p in jax.tree_util.tree_leaves(variables))
  assert count == article_param_count(*shape)
  if shape == (32, 32, 3):
    assert count == 268_650  # the article's CIFAR-10 model, as in PyTorch


def test_create_model_from_config_and_unknown_name():
  c = config_lib.get_config()
  c.activation, c.pooling = 'tanh', 'avg'
  model = models.create_model(c, 7)
  assert (model.activation, model.pooling, model.num_classes) == (
    'tanh',
    'avg',
    7,
  )
  c.model = 'no_such_model'
  with pytest.raises(ValueError, match='unknown model'):
    models.create_model(c, 10)


def test_pooling_and_activation_change_the_function():
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  variables = models.CNN().init(jax.random.key(0), x)
  base = models.CNN().apply(variables, x)
  for kwargs in ({'pooling': 'avg'}, {'activation': 'elu'}):
    assert not np.allclose(models.CNN(**kwargs).apply(variables, x), base)


def test_dropout_only_when_training():
  model = models.CNN(dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  np.testing.assert_array_equal(
    model.apply(variables, x), model.apply(variables, x)
  )
  a = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
  b = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b)


def test_apply_is_pure_and_jittable():
  model = models.CNN()
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  np.testing.assert_allclose(
    jax.jit(model.apply)(variables, x),
    model.apply(variables, x),
    rtol=1e-5,
    atol=1e-5,
  )


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.CNN(dtype=jnp.bfloat16)
  x = jnp.ones((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  assert all(
    p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables)
  )
  assert model.apply(variables, x).dtype == jnp.float32
