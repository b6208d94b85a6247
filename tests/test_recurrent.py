"""Recurrent cells, layers, the row-by-row classifier (models.recurrent)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcls
from experiments import sequential_mnist
from jaxcls import config as config_lib
from jaxcls import models
from jaxcls.models import recurrent
from jaxcls.training import run as train

HIDDEN, INPUTS, BATCH, STEPS = 8, 5, 3, 6


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_step(kind, params, carry, x):
  """The textbook equations, gate by gate, from the fused parameters."""
  wi = np.asarray(params['input_projection']['kernel'])
  bi = np.asarray(params['input_projection']['bias'])
  wh = np.asarray(params['hidden_projection']['kernel'])
  bh = np.asarray(
    params['hidden_projection'].get('bias', np.zeros(wh.shape[1]))
  )

  def blocks(w):  # The fused gate blocks, in order.
    return np.split(w, wi.shape[1] // HIDDEN, axis=-1)

  if kind == 'rnn':
    h = np.tanh(x @ wi + bi + carry @ wh + bh)
    return h, h
  if kind == 'lstm':
    c, h = carry
    (wii, wif, wig, wio), (whi, whf, whg, who) = blocks(wi), blocks(wh)
    (bii, bif, big, bio) = blocks(bi)
    i = _sigmoid(x @ wii + bii + h @ whi)
    f = _sigmoid(x @ wif + bif + h @ whf)
    g = np.tanh(x @ wig + big + h @ whg)
    o = _sigmoid(x @ wio + bio + h @ who)
    c = f * c + i * g
    h = o * np.tanh(c)
    return (c, h), h
  h = carry
  (wir, wiz, win), (whr, whz, whn) = blocks(wi), blocks(wh)
  (bir, biz, bin_), (bhr, bhz, bhn) = blocks(bi), blocks(bh)
  r = _sigmoid(x @ wir + bir + h @ whr + bhr)
  z = _sigmoid(x @ wiz + biz + h @ whz + bhz)
  n = np.tanh(x @ win + bin_ + r * (h @ whn + bhn))
  h = (1 - z) * n + z * h
  return h, h


def _randomize(params, key):
  """Every leaf (biases too) replaced by N(0, 0.5) so each term matters."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
    treedef,
    [0.5 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)],
  )


def _init_cell(kind):
  cell = recurrent.make_cell(kind, HIDDEN)
  carry = jax.tree_util.tree_map(
    lambda z: jax.random.normal(jax.random.key(1), z.shape),
    cell.zero_carry(BATCH),
  )
  x = jax.random.normal(jax.random.key(2), (BATCH, INPUTS))
  params = cell.init(jax.random.key(0), carry, x)['params']
  return cell, _randomize(params, jax.random.key(3)), carry, x


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('kind', ['rnn', 'lstm', 'gru'])
def test_cell_step_matches_numpy_equations(kind):
  cell, params, carry, x = _init_cell(kind)
  new_carry, h = cell.apply({'params': params}, carry, x)
  want_carry, want_h = _numpy_step(
    kind, params, jax.tree_util.tree_map(np.asarray, carry), np.asarray(x)
  )
  np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
    new_carry,
    want_carry,
  )


def test_gru_has_pytorch_parameter_shapes():
  _, params, _, _ = _init_cell('gru')
  shapes = jax.tree_util.tree_map(np.shape, params)
  assert shapes == {
    'input_projection': {'kernel': (INPUTS, 3 * HIDDEN), 'bias': (3 * HIDDEN,)},
    'hidden_projection': {
      'kernel': (HIDDEN, 3 * HIDDEN),
      'bias': (3 * HIDDEN,),
    },
  }


@pytest.mark.parametrize('forget_bias', [0.0, 1.0])
def test_lstm_forget_bias_initialises_only_the_forget_gate(forget_bias):
  cell = recurrent.LSTMCell(HIDDEN, forget_bias=forget_bias)
  x = jnp.zeros((BATCH, INPUTS))
  bias = cell.init(jax.random.key(0), cell.zero_carry(BATCH), x)['params'][
    'input_projection'
  ]['bias']
  want = np.zeros(4 * HIDDEN)
  want[HIDDEN : 2 * HIDDEN] = forget_bias  # PyTorch order i, f, g, o.
  np.testing.assert_array_equal(bias, want)


def _python_loop(kind, cell_params, xs, reverse=False):
  """The cell applied step by step in a plain Python loop."""
  cell = recurrent.make_cell(kind, HIDDEN)
  carry = cell.zero_carry(xs.shape[1])
  order = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
  outputs = [None] * xs.shape[0]
  for t in order:
    carry, outputs[t] = cell.apply({'params': cell_params}, carry, xs[t])
  return np.stack(outputs)


def _sequence(steps=STEPS):
  return jax.random.normal(jax.random.key(4), (steps, BATCH, INPUTS))


@pytest.mark.parametrize('kind', ['rnn', 'lstm', 'gru'])
@pytest.mark.parametrize('reverse', [False, True])
def test_scanned_layer_matches_python_loop(kind, reverse):
  layer = recurrent.Recurrent(kind, HIDDEN, reverse=reverse)
  xs = _sequence()
  params = _randomize(
    layer.init(jax.random.key(0), xs)['params'], jax.random.key(5)
  )
  outputs, last = layer.apply({'params': params}, xs)
  want = _python_loop(kind, params['cell'], xs, reverse)
  np.testing.assert_allclose(outputs, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    last, want[0] if reverse else want[-1], rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize(
  'kind,reverse,dtype',
  [
    (kind, reverse, jnp.float32)
    for kind in ('lstm', 'gru')
    for reverse in (False, True)
  ]
  # bfloat16 in the full tier only (the fast tier keeps one case per path).
  + [
    pytest.param('lstm', False, jnp.bfloat16, marks=pytest.mark.slow),
    pytest.param('gru', True, jnp.bfloat16, marks=pytest.mark.slow),
  ],
)
def test_fused_sequence_gradients_match_autodiff_of_the_step_path(
  kind, reverse, dtype
):
  """The hand-written backward passes against autodiff of nn.scan's steps."""
  xs = _sequence()
  fused = recurrent.Recurrent(kind, HIDDEN, reverse=reverse, dtype=dtype)
  stepped = recurrent.Recurrent(
    kind, HIDDEN, reverse=reverse, dtype=dtype, fused=False
  )
  # Jitted throughout: one compile per function instead of one per op.
  fused_params = jax.jit(fused.init)(jax.random.key(0), xs)['params']
  params = _randomize(fused_params, jax.random.key(7))
  # Both read the same parameters (initialisation takes the step path).
  jax.tree_util.tree_map(
    np.testing.assert_array_equal,
    jax.jit(stepped.init)(jax.random.key(0), xs)['params'],
    fused_params,
  )
  weights = jax.random.normal(jax.random.key(8), (STEPS, BATCH, HIDDEN))

  def loss(layer, params, xs):
    outputs, last = layer.apply({'params': params}, xs)
    # Both outputs count, with weights, so every cotangent path is used.
    return (outputs * weights).sum() + (last**2).sum()

  got = jax.jit(jax.grad(functools.partial(loss, fused), argnums=(0, 1)))(
    params, xs
  )
  want = jax.jit(jax.grad(functools.partial(loss, stepped), argnums=(0, 1)))(
    params, xs
  )
  tol = 1e-4 if dtype == jnp.float32 else 0.1
  flat_got, flat_want = (jax.tree_util.tree_leaves(t) for t in (got, want))
  assert len(flat_got) == len(flat_want) == (5 if kind == 'gru' else 4)
  for g, w in zip(flat_got, flat_want):
    scale = float(jnp.abs(w).max())
    assert scale > 0
    np.testing.assert_allclose(g, w, rtol=0, atol=tol * scale)


def test_bidirectional_backward_half_reads_the_sequence_in_reverse():
  layer = recurrent.Bidirectional('lstm', HIDDEN)
  xs = _sequence()
  params = _randomize(
    layer.init(jax.random.key(0), xs)['params'], jax.random.key(6)
  )
  outputs, last = layer.apply({'params': params}, xs)
  assert outputs.shape == (STEPS, BATCH, 2 * HIDDEN)
  fwd, bwd = outputs[..., :HIDDEN], outputs[..., HIDDEN:]
  # The backward half is the backward cell run forward over the reversed
  # sequence, its outputs flipped back into input order.
  on_reversed = _python_loop('lstm', params['backward']['cell'], xs[::-1])
  np.testing.assert_allclose(bwd, on_reversed[::-1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    fwd,
    _python_loop('lstm', params['forward']['cell'], xs),
    rtol=1e-5,
    atol=1e-5,
  )
  # The final state of each direction: forward after t=T-1, backward after 0.
  np.testing.assert_allclose(
    last, np.concatenate([fwd[-1], bwd[0]], -1), rtol=1e-6
  )
  # Changing only the last step changes every backward output but only the
  # last forward output.
  changed, _ = layer.apply({'params': params}, xs.at[-1].add(1.0))
  moved = np.abs(np.asarray(changed - outputs)).max(axis=1)
  assert np.all(moved[:-1, :HIDDEN] == 0)
  assert np.all(moved[:, HIDDEN:].max(axis=-1) > 1e-4)


def _images(n=4, seed=0, size=28):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 1), minval=-1)


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('kind', ['rnn', 'lstm', 'gru'])
def test_gradients_are_finite_and_reach_the_first_row(kind):
  model = recurrent.RecurrentClassifier(kind, hidden_size=32)
  images = _images()
  params = jax.jit(model.init)(jax.random.key(0), images)['params']

  def loss(params, images):
    logits = model.apply({'params': params}, images)
    return train.cross_entropy(logits, jnp.arange(4)).mean()

  grads, image_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, images)
  for g in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(g))
  # 28 steps back to row 0: the gradient must still be there.
  first_row = np.abs(np.asarray(image_grads[:, 0])).max()
  assert np.isfinite(first_row) and first_row > 0


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_stack_applies_dropout_only_between_layers():
  images = _images(size=8)
  for layers, expect_change in [(1, False), (2, True)]:
    model = recurrent.RecurrentClassifier(
      'gru', hidden_size=HIDDEN, num_layers=layers, dropout_rate=0.5
    )
    variables = model.init(jax.random.key(0), images)
    assert sorted(variables['params']['rnn']) == [
      f'layer_{i}' for i in range(layers)
    ]
    eval_logits = model.apply(variables, images)
    train_logits = model.apply(
      variables, images, train=True, rngs={'dropout': jax.random.key(1)}
    )
    assert (not np.allclose(eval_logits, train_logits)) == expect_change


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_readouts_and_image_rows():
  images = _images(3, seed=1, size=7)
  common = dict(hidden_size=16, bidirectional=True)
  last = recurrent.RecurrentClassifier('lstm', readout='last', **common)
  mean = recurrent.RecurrentClassifier('lstm', readout='mean', **common)
  params = last.init(jax.random.key(0), images)['params']
  rows = jnp.transpose(images[..., 0], (1, 0, 2))  # 7 steps of 7 pixels.
  stack = recurrent.RecurrentStack('lstm', 16, bidirectional=True)
  outputs, final = stack.apply({'params': params['rnn']}, rows)

  def head(features):
    return features @ params['head']['kernel'] + params['head']['bias']

  np.testing.assert_allclose(
    last.apply({'params': params}, images),
    head(final),
    rtol=1e-5,
    atol=1e-5,
  )
  np.testing.assert_allclose(
    mean.apply({'params': params}, images),
    head(outputs.mean(0)),
    rtol=1e-5,
    atol=1e-5,
  )
  # CIFAR-10: 32 steps of 32 * 3 = 96 features.
  cifar = jnp.zeros((2, 32, 32, 3))
  shapes = jax.eval_shape(last.init, jax.random.key(0), cifar)['params']
  kernel = shapes['rnn']['layer_0']['forward']['cell']['input_projection'][
    'kernel'
  ]
  assert kernel.shape == (96, 4 * 16)


def test_registry_and_config_validation():
  assert {'rnn', 'lstm', 'gru'} <= set(jaxcls.models.MODELS)
  config = sequential_mnist.get_config()
  config_lib.validate(config)
  for kind in ('rnn', 'lstm', 'gru'):
    config.model = kind
    model = models.create_model(config, 10)
    assert isinstance(model, recurrent.RecurrentClassifier)
    assert (model.cell, model.hidden_size) == (kind, 128)
  for field, bad, words in [
    ('readout', 'max', 'readout'),
    ('hidden_size', 0, 'hidden_size must be > 0'),
    ('num_layers', -1, 'num_layers must be > 0'),
    ('forget_bias', -1.0, 'forget_bias'),
  ]:
    broken = sequential_mnist.get_config()
    broken[field] = bad
    with pytest.raises(ValueError, match=words):
      config_lib.validate(broken)


@pytest.mark.slow
def test_short_training_on_fashion_mnist_rows(tmp_path):
  """The real loop on real data: 2 epochs of 4000 Fashion-MNIST images."""
  config = sequential_mnist.get_config()
  config.train_examples = 4000
  config.num_epochs = 2
  results = train.train_and_evaluate(config, str(tmp_path))
  # Chance is 10%; a model that does not learn from the rows stays near it.
  assert results['test_accuracy'] > 0.70, results
  with open(os.path.join(tmp_path, 'results.json')) as f:
    saved = json.load(f)
  assert saved['model'] == 'lstm' and saved['test_accuracy'] == pytest.approx(
    results['test_accuracy']
  )
