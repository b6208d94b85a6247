"""Variable-length sequences through the recurrent layers (``lengths``).

Two independent checks: a padded batch gives each sequence what it gives
alone, and with the same weights the layers equal PyTorch's ``nn.LSTM`` /
``nn.GRU`` over ``pack_padded_sequence`` (values and every gradient). PyTorch
runs in its own Python (``tests/torch_packed.py``): ``JAXCLS_TORCH_PYTHON``,
else the checkout's ``.venv-bench/bin/python``; CI makes that venv.
"""

import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import accel
from jaxcls.models import recurrent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = os.environ.get(
  'JAXCLS_TORCH_PYTHON', os.path.join(ROOT, '.venv-bench', 'bin', 'python')
)
LENGTHS = np.array([5, 1, 7, 3], np.int32)  # unsorted, one of length 1
T, D, H = 7, 3, 16


def stack(kind, num_layers=1, bidirectional=False, fused=True):
  return recurrent.RecurrentStack(
    kind, H, num_layers, bidirectional, fused=fused
  )


def inputs(seed=0, lengths=LENGTHS):
  """Time-major ``(T, B, D)`` inputs, padding filled with large junk."""
  x = np.random.default_rng(seed).normal(size=(T, len(lengths), D))
  pad = np.arange(T)[:, None] >= lengths[None, :]
  x[pad] = 50.0  # must not reach any result
  return jnp.asarray(x, jnp.float32)


def run(module, variables, xs, lengths):
  return module.apply(variables, xs, lengths=jnp.asarray(lengths))


def slow_unless(case, *params):
  """``params`` as a pytest case, in the full tier unless it is ``case``."""
  if params == case:
    return params
  return pytest.param(*params, marks=pytest.mark.slow)


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize(
  'kind,bidirectional',
  [
    slow_unless(('lstm', True), k, b)
    for k in ('rnn', 'lstm', 'gru')
    for b in (False, True)
  ],
)
def test_each_sequence_gets_what_it_gets_alone(kind, bidirectional):
  module = stack(kind, 2, bidirectional)
  xs = inputs()
  variables = module.init(jax.random.key(0), xs, lengths=jnp.asarray(LENGTHS))
  outputs, last = run(module, variables, xs, LENGTHS)
  for b, n in enumerate(LENGTHS):
    alone_out, alone_last = module.apply(variables, xs[:n, b : b + 1])
    np.testing.assert_allclose(outputs[:n, b], alone_out[:, 0], atol=2e-6)
    np.testing.assert_allclose(last[b], alone_last[0], atol=2e-6)
    assert np.all(np.asarray(outputs[n:, b]) == 0)  # padding reads zero


@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_full_lengths_change_nothing(kind):
  """``lengths == T`` is the unmasked layer, bit for bit."""
  module = stack(kind, 1, True)
  xs = inputs(lengths=np.full(4, T, np.int32))
  variables = module.init(jax.random.key(1), xs)
  full = run(module, variables, xs, np.full(4, T, np.int32))
  plain = module.apply(variables, xs)
  for a, b in zip(full, plain):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_fused_and_step_paths_agree_with_lengths(kind):
  xs = inputs(2)
  fused, step = stack(kind, 1, True), stack(kind, 1, True, fused=False)
  variables = fused.init(jax.random.key(2), xs)

  def loss(module, v):
    out, last = run(module, v, xs, LENGTHS)
    return jnp.sum(out**2) + jnp.sum(jnp.sin(last))

  a = jax.value_and_grad(lambda v: loss(fused, v))(variables)
  b = jax.value_and_grad(lambda v: loss(step, v))(variables)
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
  jax.tree.map(
    lambda p, q: np.testing.assert_allclose(p, q, atol=1e-5), a[1], b[1]
  )


def torch_weights(variables, kind, num_layers, bidirectional) -> dict:
  """jaxcls's parameters under PyTorch's names (same gate layouts)."""
  params, out = variables['params'], {}
  for layer in range(num_layers):
    tree = params[f'layer_{layer}']
    directions = (
      [('forward', ''), ('backward', '_reverse')]
      if bidirectional
      else [(None, '')]
    )
    for key, suffix in directions:
      cell = (tree[key] if key else tree)['cell']
      w_i, w_h = cell['input_projection'], cell['hidden_projection']
      tail = f'_l{layer}{suffix}'
      out['weight_ih' + tail] = np.asarray(w_i['kernel'], np.float64).T
      out['weight_hh' + tail] = np.asarray(w_h['kernel'], np.float64).T
      out['bias_ih' + tail] = np.asarray(w_i['bias'], np.float64)
      out['bias_hh' + tail] = (
        np.asarray(w_h['bias'], np.float64)
        if 'bias' in w_h
        else np.zeros_like(out['bias_ih' + tail])
      )
  return out


@pytest.mark.parametrize(
  'kind,num_layers,bidirectional,kernels',
  [
    slow_unless(('lstm', 2, True, 'on'), *case, kernels)
    for case in (
      ('lstm', 1, False),
      ('lstm', 2, True),
      ('gru', 1, True),
      ('gru', 2, False),
    )
    for kernels in ('on', 'off')
  ],
)
def test_equals_pytorch_packed_sequences(
  tmp_path, kind, num_layers, bidirectional, kernels
):
  """On the CPU kernels ('on', where a compiler built them) and on XLA's
  ops ('off'), the same numbers as PyTorch's packed sequences."""
  with accel.using(kernels=kernels):
    check_against_pytorch(tmp_path, kind, num_layers, bidirectional)


def check_against_pytorch(tmp_path, kind, num_layers, bidirectional):
  if not os.path.exists(TORCH_PYTHON):
    pytest.skip(f'no PyTorch Python at {TORCH_PYTHON} (JAXCLS_TORCH_PYTHON)')
  module = stack(kind, num_layers, bidirectional)
  xs = inputs(3)
  variables = module.init(jax.random.key(3), xs)
  dirs = 2 if bidirectional else 1
  rng = np.random.default_rng(4)
  cot_out = rng.normal(size=(len(LENGTHS), T, dirs * H))
  cot_last = rng.normal(size=(len(LENGTHS), dirs * H))
  # PyTorch's h_n: (layers * dirs, B, H); only the top layer's is returned.
  cot_h = np.zeros((num_layers * dirs, len(LENGTHS), H))
  cot_h[-dirs:] = cot_last.reshape(len(LENGTHS), dirs, H).transpose(1, 0, 2)
  weights = torch_weights(variables, kind, num_layers, bidirectional)
  np.savez(
    tmp_path / 'in.npz',
    x=np.asarray(xs, np.float64).transpose(1, 0, 2),
    lengths=LENGTHS,
    kind=kind,
    hidden_size=H,
    num_layers=num_layers,
    bidirectional=bidirectional,
    cot_out=cot_out,
    cot_h=cot_h,
    **weights,
  )
  done = subprocess.run(
    [
      TORCH_PYTHON,
      os.path.join(ROOT, 'tests', 'torch_packed.py'),
      tmp_path / 'in.npz',
      tmp_path / 'out.npz',
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  ref = np.load(tmp_path / 'out.npz')

  def loss(v, x):
    with jax.default_matmul_precision('highest'):
      out, last = run(module, v, x, LENGTHS)
    return jnp.sum(out.transpose(1, 0, 2) * cot_out) + jnp.sum(last * cot_last)

  with jax.default_matmul_precision('highest'):
    out, last = run(module, variables, xs, LENGTHS)
  np.testing.assert_allclose(out.transpose(1, 0, 2), ref['out'], atol=2e-5)
  top = ref['h_n'][-dirs:].transpose(1, 0, 2).reshape(len(LENGTHS), -1)
  np.testing.assert_allclose(last, top, atol=2e-5)
  grads, grad_x = jax.grad(loss, argnums=(0, 1))(variables, xs)
  # Padding gets exactly no gradient, as in PyTorch's packed sequence.
  np.testing.assert_allclose(
    np.asarray(grad_x).transpose(1, 0, 2), ref['grad_x'], atol=1e-4
  )
  assert np.all(np.asarray(grad_x)[np.arange(T)[:, None] >= LENGTHS] == 0)
  ours = torch_weights(grads, kind, num_layers, bidirectional)
  for name, g in ours.items():
    expected = ref[f'grad_{name}']
    if name.startswith('bias_hh') and kind == 'lstm':
      # One LSTM bias here; PyTorch's two get the same gradient.
      g = ours[name.replace('bias_hh', 'bias_ih')]
    np.testing.assert_allclose(g, expected, atol=1e-4, err_msg=name)
