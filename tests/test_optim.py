"""The optax chain: choices, decay mask, schedules, clipping, penalties."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcls import config as config_lib
from jaxcls import optim

PARAMS = {
  'Dense_0': {'kernel': jnp.full((3, 2), 2.0), 'bias': jnp.ones(2)},
  'Conv_0': {'kernel': jnp.full((2, 2, 1, 1), -1.0), 'bias': jnp.ones(1)},
}


def config(**kw):
  c = config_lib.get_config()
  for k, v in kw.items():
    c[k] = v
  return c


def test_adamw_decays_kernels_but_not_biases():
  tx = optim.create_optimizer(
    config(optimizer='adamw', learning_rate=0.1, weight_decay=0.5),
    steps_per_epoch=10,
  )
  zero_grads = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
  for layer in PARAMS:
    # With zero gradients only the decoupled decay moves a parameter.
    np.testing.assert_allclose(
      updates[layer]['kernel'], -0.1 * 0.5 * PARAMS[layer]['kernel'], rtol=1e-6
    )
    np.testing.assert_array_equal(updates[layer]['bias'], 0.0)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_each_optimizer_descends_a_quadratic(name):
  tx = optim.create_optimizer(
    config(optimizer=name, learning_rate=0.05), steps_per_epoch=10
  )
  params = {'w': jnp.array([3.0, -2.0])}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['w'] ** 2)
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert loss(params) < 0.5 * 13.0


def test_warmup_cosine_schedule_shape():
  sched = optim.learning_rate_schedule(
    config(
      lr_schedule='warmup_cosine',
      learning_rate=1.0,
      num_epochs=10,
      warmup_epochs=1.0,
    ),
    steps_per_epoch=100,
  )
  assert float(sched(0)) == 0.0
  assert float(sched(100)) == pytest.approx(1.0)
  assert float(sched(550)) == pytest.approx(0.5, abs=1e-6)  # half way down
  assert float(sched(1000)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_clipping_bounds_the_sgd_step():
  tx = optim.create_optimizer(
    config(optimizer='sgd', learning_rate=1.0, grad_clip_norm=0.5),
    steps_per_epoch=1,
  )
  grads = {'w': jnp.array([30.0, 40.0])}  # global norm 50
  updates, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(updates['w'], [-0.3, -0.4], rtol=1e-6)


def test_penalties_match_numpy_and_skip_biases():
  kernels = [np.asarray(PARAMS[k]['kernel']) for k in PARAMS]
  assert float(optim.l1_penalty(PARAMS)) == pytest.approx(
    sum(np.abs(k).sum() for k in kernels)
  )
  assert float(optim.l2_penalty(PARAMS)) == pytest.approx(
    0.5 * sum((k**2).sum() for k in kernels)
  )


def test_unknown_optimizer():
  with pytest.raises(ValueError, match='unknown optimizer'):
    optim.create_optimizer(config(optimizer='lion'), 1)
