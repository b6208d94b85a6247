"""Gradient accumulation (``accumulate_steps``) and the profiler switch."""

import functools
import glob
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.training import run as train


def _trajectory(config, images, labels, spe: int, calls: int):
  """Params after ``calls`` train steps of ``config.batch_size`` each."""
  model = models.create_model(config, 10)
  tx = optim.create_optimizer(config, spe)
  state = train.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))
  step = jax.jit(
    functools.partial(
      train.train_step, **train.step_options(config, data.dataset_spec(config))
    )
  )
  b, rng, seen = config.batch_size, jax.random.key(1), []
  for i in range(calls):
    batch = {
      'image': images[i * b : (i + 1) * b],
      'label': labels[i * b : (i + 1) * b],
    }
    state, _ = step(state, batch, rng)
    seen.append(jax.device_get(state.params))
  return seen


def _data(n):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  return images, rng.integers(0, 10, n).astype(np.int32)


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_k_steps_of_batch_b_equal_one_step_of_batch_kb(optimizer):
  k, b, updates = 4, 8, 3
  images, labels = _data(k * b * updates)
  common = dict(
    optimizer=optimizer,
    learning_rate=0.05 if optimizer == 'sgd' else 1e-3,
    lr_schedule='warmup_cosine',
    warmup_epochs=1.0,
    num_epochs=2,
  )
  # The schedule counts optimizer steps: 6 batches of k*b, or 6*k of b.
  big = _trajectory(
    tiny_config(batch_size=k * b, **common), images, labels, 3, updates
  )
  small = _trajectory(
    tiny_config(batch_size=b, accumulate_steps=k, **common),
    images,
    labels,
    3 * k,
    k * updates,
  )
  for u in range(updates):
    # Between updates the params do not move.
    for i in range(max(1, u * k), u * k + k - 1):
      jax.tree.map(np.testing.assert_array_equal, small[i], small[i - 1])
    got, want = small[u * k + k - 1], big[u]
    jax.tree.map(
      lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6),
      got,
      want,
    )
  moved = jax.tree.leaves(
    jax.tree.map(lambda a, c: np.abs(a - c).max(), big[-1], big[0])
  )
  assert max(moved) > 0  # The comparison is not between untrained states.


def test_bad_values_are_one_line_errors():
  for field, value, needle in [
    ('accumulate_steps', 0, 'accumulate_steps must be > 0'),
    ('profile_steps', '5:2', 'needs 0 <= START < END'),
    ('profile_steps', 'ten', 'must be START:END'),
  ]:
    config = tiny_config()
    config[field] = value
    with pytest.raises(ValueError) as e:
      config_lib.validate(config)
    assert needle in str(e.value) and '\n' not in str(e.value)


@pytest.mark.slow
def test_accumulation_resumes_exactly_across_an_epoch_end(tmp_path):
  # 14 steps per epoch, 3 batches per update: an update spans epoch ends,
  # and the epoch-end checkpoint holds a partial accumulation.
  over = dict(accumulate_steps=3, num_epochs=2, checkpoint_every_steps=5)
  whole = train.train_and_evaluate(tiny_config(**over), str(tmp_path / 'a'))
  first = tiny_config(**dict(over, num_epochs=1))
  train.train_and_evaluate(first, str(tmp_path / 'b'))
  resumed = train.train_and_evaluate(tiny_config(**over), str(tmp_path / 'b'))
  assert (whole['steps'] // 2) % 3 != 0
  assert not os.path.exists(tmp_path / 'a' / 'profile')  # Off by default.
  assert resumed['params_sha256'] == whole['params_sha256']
  plain = train.train_and_evaluate(
    tiny_config(num_epochs=2), str(tmp_path / 'c')
  )
  assert plain['params_sha256'] != whole['params_sha256']


@pytest.mark.slow
def test_profile_steps_write_a_trace_of_those_steps(tmp_path):
  config = tiny_config(profile_steps='3:6', steps_per_call=2)
  train.train_and_evaluate(config, str(tmp_path))
  traces = glob.glob(str(tmp_path / 'profile/plugins/profile/*/*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.slow
def test_a_population_member_accumulates_as_the_single_run():
  from jaxcls import sweep
  from jaxcls.sweep import population
  from test_sweep import (
    _max_diff,
    _quiet,
    _single_run,
    _tiny_config,
    _tiny_data,
  )

  config = sweep.member_config(_tiny_config(accumulate_steps=2), {})
  ds = _tiny_data()
  result = population.train_population(config, [{}], ds, log=_quiet)
  state, _ = _single_run(config, ds)
  plain, _ = _single_run(sweep.member_config(_tiny_config(), {}), ds)
  member = result.final_states[0]
  assert _max_diff(member.params, state.params) < 2e-3
  assert _max_diff(plain.params, state.params) > 1e-2  # It did accumulate.


@pytest.mark.slow
def test_accumulation_on_eight_devices_matches_one(tmp_path):
  from test_parallel import assert_close, params, run_tiny

  flags = ('--config.accumulate_steps=2',)
  run_tiny(tmp_path / 'one', *flags)
  run_tiny(tmp_path / 'eight', *flags, devices=8)
  assert_close(params(tmp_path / 'eight'), params(tmp_path / 'one'))
