"""Data parallelism: 8 CPU devices (jit and pmap) and 2 processes (gloo)
against one device; checkpoints across device counts; exact evaluation."""

import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxcls import data, models, optim
from jaxcls.data import local_files as local_data
from jaxcls.training import parallel
from jaxcls.training import run as train

pytestmark = [
  pytest.mark.slow,  # Trains models: the full tier.
  pytest.mark.skipif(
    not local_data.files_present(),
    reason='needs dataset-fashion-mnist (see .ci/run)',
  ),
]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# 16 steps of batch 64; enough for float differences to show if any exist.
TINY = [
  '--config.train_examples=1024',
  '--config.num_epochs=1',
  '--config.eval_batch_size=512',
]


def run_tiny(workdir, *flags, devices=1, env=None, wait=True):
  env = {
    **os.environ,
    'TF_CPP_MIN_LOG_LEVEL': '3',
    **(env or {}),
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
  }
  cmd = [
    sys.executable,
    os.path.join(HERE, 'run_tiny.py'),
    str(workdir),
    *TINY,
    *flags,
  ]
  if not wait:
    return subprocess.Popen(
      cmd,
      env=env,
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
  proc = subprocess.run(
    cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def params(workdir):
  with np.load(os.path.join(workdir, 'params.npz')) as f:
    return {k: f[k] for k in f.files}


def assert_close(a, b):
  """Equal up to float reassociation: sums over 8 devices or 2 processes
  add in another order, and Adam magnifies that on near-zero gradients."""
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-4, err_msg=k)
  # And they did train: far from the initial parameters of another seed.
  assert any(not np.allclose(a[k], 0) for k in a)


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one')
  run_tiny(workdir)
  return workdir


@pytest.fixture(scope='module')
def eight_devices(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('eight')
  assert 'RESULT' in run_tiny(workdir, devices=8)
  return workdir


def test_eight_devices_with_jit_match_one(one_device, eight_devices):
  assert_close(params(eight_devices), params(one_device))


def test_eight_devices_with_pmap_match_one(one_device, tmp_path):
  assert 'RESULT' in run_tiny(tmp_path, '--config.parallel=pmap', devices=8)
  assert_close(params(tmp_path), params(one_device))


def test_checkpoint_saved_on_n_devices_restores_on_m(
  one_device, eight_devices, tmp_path
):
  eight_then_one, one_then_eight = tmp_path / 'a', tmp_path / 'b'
  shutil.copytree(eight_devices, eight_then_one)
  shutil.copytree(one_device, one_then_eight)
  run_tiny(eight_then_one, '--config.num_epochs=2', devices=1)
  run_tiny(one_then_eight, '--config.num_epochs=2', devices=8)
  assert_close(params(eight_then_one), params(one_then_eight))


def test_global_batch_not_divisible_by_devices_is_one_clear_error(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.fashion_mnist',
      '--config.batch_size=60',
      f'--workdir={tmp_path}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={
      **os.environ,
      'TF_CPP_MIN_LOG_LEVEL': '3',
      'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
    },
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
    'error: batch_size=60 is not divisible by the 8 devices; set '
    '--config.batch_size to a multiple of 8'
  )


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
  single = tmp_path / 'single'
  run_tiny(single, '--config.num_data_shards=2')
  multi = tmp_path / 'multi'
  port = _free_port()
  procs = [
    run_tiny(
      multi,
      '--config.distributed=true',
      wait=False,
      env={
        'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
        'JAX_NUM_PROCESSES': '2',
        'JAX_PROCESS_ID': str(i),
      },
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert 'RESULT' in outputs[0] and 'RESULT' not in outputs[1]
  assert '[epoch 1]' in outputs[0] and '[epoch 1]' not in outputs[1]
  assert_close(params(multi), params(single))


def test_evaluation_counts_every_example_once_when_the_batch_does_not_divide():
  rng = np.random.default_rng(0)
  split = data.Split(
    rng.integers(0, 256, (1001, 28, 28, 1), dtype=np.uint8),
    rng.integers(0, 10, 1001).astype(np.int32),
  )
  config = tiny_config()
  state = train.create_train_state(
    jax.random.key(0),
    models.create_model(config, 10),
    optim.create_optimizer(config, 1),
    (28, 28, 1),
  )
  logits = state.apply_fn(
    {'params': state.params}, data.normalize(split.images)
  )
  exact = float(np.mean(np.argmax(logits, -1) == split.labels))
  mesh = parallel.make_mesh()
  result = train.evaluate(jax.jit(train.eval_step), state, split, 64, mesh)
  assert result['count'] == 1001
  assert result['accuracy'] == pytest.approx(exact, abs=1e-7)


def test_recurrent_kernels_on_eight_devices_match_one(tmp_path):
  """An LSTM whose recurrence runs on the CPU kernel (jaxcls.cpu_rnn: a
  custom call XLA cannot look into) trains on 8 devices, with jit's
  sharding and with pmap, what it trains on one."""
  flags = (
    '--config.model=lstm',
    '--config.hidden_size=32',
    '--config.train_examples=512',
  )
  runs = {}
  for name, devices, extra in [
    ('one', 1, ()),
    ('jit', 8, ()),
    ('pmap', 8, ('--config.parallel=pmap',)),
  ]:
    workdir = tmp_path / name
    workdir.mkdir()
    assert 'RESULT' in run_tiny(workdir, *flags, *extra, devices=devices)
    runs[name] = params(workdir)
  assert_close(runs['jit'], runs['one'])
  assert_close(runs['pmap'], runs['one'])
