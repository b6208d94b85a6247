"""The cuDNN LSTM path (jaxcls.cudnn_lstm).

On a CPU: the weight packing against ``jax.experimental.rnn``'s own reference
LSTM (which reads cuDNN's layout), and the dispatch rule. On an NVIDIA GPU
also: cuDNN's LSTM layer against jaxcls's step path, values and gradients.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from jaxcls import accel
from jaxcls.accel import cudnn_lstm
from jaxcls.models import recurrent

STEPS, BATCH, FEATURES, HIDDEN = 7, 3, 5, 6


def _random_lstm(seed):
  keys = jax.random.split(jax.random.key(seed), 6)
  return (
    jax.random.normal(keys[0], (STEPS, BATCH, FEATURES)),
    0.5 * jax.random.normal(keys[1], (FEATURES, 4 * HIDDEN)),
    0.5 * jax.random.normal(keys[2], (HIDDEN, 4 * HIDDEN)),
    jax.random.normal(keys[3], (4 * HIDDEN,)),
    (
      jax.random.normal(keys[4], (BATCH, HIDDEN)),
      jax.random.normal(keys[5], (BATCH, HIDDEN)),
    ),
  )


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_packed_weights_drive_jax_reference_lstm_like_ours():
  """cuDNN's layout (read by rnn.unpack_lstm_weights + rnn.lstm_ref, JAX's
  own reference for its cuDNN LSTM) gives our LSTM's outputs and state."""
  xs, w_i, w_h, b, (c0, h0) = _random_lstm(0)
  want_hs, (want_c, want_h) = recurrent.lstm_sequence(
    jnp.float32, xs, w_i, w_h, b, (c0, h0)
  )
  packed = cudnn_lstm.pack_weights(w_i, w_h, b)
  assert packed.shape == (
    rnn.get_num_params_in_lstm(FEATURES, HIDDEN, 1, False),
  )
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
    packed, FEATURES, HIDDEN, 1, False
  )
  ys, h_n, c_n = rnn.lstm_ref(
    jnp.swapaxes(xs, 0, 1),
    h0[None],
    c0[None],
    w_ih,
    w_hh,
    b_ih,
    b_hh,
    jnp.full((BATCH,), STEPS, jnp.int32),
    FEATURES,
    HIDDEN,
    1,
    0.0,
    False,
  )
  np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), want_hs, atol=1e-5)
  np.testing.assert_allclose(h_n[0], want_h, atol=1e-5)
  np.testing.assert_allclose(c_n[0], want_c, atol=1e-5)


def test_cudnn_runs_only_when_enabled_for_float32_on_gpus(monkeypatch):
  assert not accel.Settings().cudnn_lstm  # Off by default.
  on_this_machine = cudnn_lstm.use_cudnn(jnp.float32, True)
  assert on_this_machine == (jax.default_backend() == 'gpu')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert cudnn_lstm.use_cudnn(jnp.float32, True)
  assert not cudnn_lstm.use_cudnn(jnp.bfloat16, True)
  assert not cudnn_lstm.use_cudnn(jnp.float32, False)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert not cudnn_lstm.use_cudnn(jnp.float32, True)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a GPU')
@pytest.mark.parametrize('reverse', [False, True])
def test_cudnn_layer_matches_the_step_path_values_and_gradients(
  reverse, monkeypatch
):
  # The time-major input reaches cuDNN through a transpose, the case where
  # XLA, left free to choose layouts, gave wrong values.
  monkeypatch.setattr(
    accel, '_settings', dataclasses.replace(accel.settings(), cudnn_lstm=True)
  )
  xs = _random_lstm(1)[0]
  on_cudnn = recurrent.Recurrent('lstm', HIDDEN, reverse=reverse)
  stepped = recurrent.Recurrent('lstm', HIDDEN, reverse=reverse, fused=False)
  params = on_cudnn.init(jax.random.key(0), xs)['params']
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree_util.tree_unflatten(
    treedef, [0.5 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)]
  )
  weights = jax.random.normal(jax.random.key(3), (STEPS, BATCH, HIDDEN))

  def loss(layer, params, xs):
    outputs, last = layer.apply({'params': params}, xs)
    return (outputs * weights).sum() + (last**2).sum()

  with jax.default_matmul_precision('highest'):  # No TF32 on either side.
    # The cuDNN custom call is in the compiled program.
    hlo = jax.jit(functools.partial(loss, on_cudnn)).lower(params, xs)
    assert 'cudnn' in hlo.as_text().lower()
    grad_fn = functools.partial(jax.value_and_grad, argnums=(0, 1))
    got = jax.jit(grad_fn(functools.partial(loss, on_cudnn)))(params, xs)
    want = jax.jit(grad_fn(functools.partial(loss, stepped)))(params, xs)
  flat_got, flat_want = (jax.tree_util.tree_leaves(t) for t in (got, want))
  assert len(flat_got) == len(flat_want) == 5  # loss, 3 params, d xs
  for g, w in zip(flat_got, flat_want):
    scale = float(jnp.abs(w).max())
    assert scale > 0
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * scale)


def test_pinned_lowering_puts_row_major_layouts_on_the_custom_call():
  """The wrapper jaxcls puts around jaxlib's cuDNN RNN lowerings, applied to
  a stand-in custom call (lowered for any platform, never run)."""
  from jax.extend.core import Primitive
  from jax.interpreters import mlir
  from jaxlib.mlir import ir
  from jaxlib.mlir.dialects import stablehlo

  prim = Primitive('jaxcls_test_layouts')
  prim.multiple_results = True
  prim.def_abstract_eval(lambda x, y: (x, y))

  def unpinned(ctx, x, y):  # As jaxlib builds it: no layouts.
    call = stablehlo.CustomCallOp(
      [x.type, y.type], [x, y], call_target_name=ir.StringAttr.get('nothing')
    )
    return list(call.results)

  mlir.register_lowering(prim, cudnn_lstm._with_row_major_layouts(unpinned))
  text = (
    jax.jit(lambda x, y: prim.bind(jnp.swapaxes(x, 0, 1), y))
    .lower(jnp.zeros((2, 3, 4)), jnp.zeros((5,)))
    .as_text()
  )
  assert 'operand_layouts = [dense<[2, 1, 0]> : tensor<3xindex>, dense<0>' in (
    text
  )
  assert 'result_layouts = [dense<[2, 1, 0]> : tensor<3xindex>, dense<0>' in (
    text
  )
