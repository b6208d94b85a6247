"""jaxcls.accel: measured choices, the settings jit sees, the recorded path,
the kernel cache's safety, and the library without the folder."""

import json
import logging
import os
import shutil
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import CPU_ONLY
from conftest import tiny_config
from jaxcls import accel, models, optim
from jaxcls import config as config_lib
from jaxcls.accel import build, choice, cpu_conv
from jaxcls.training import run as train
from jaxcls.training import steps
from jaxcls.training import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = {  # The batch of tiny_config: the shapes a run's record names.
  'image': jnp.zeros((64, 28, 28, 1), jnp.uint8),
  'label': jnp.zeros((64,), jnp.int32),
}


def _state():
  model = models.create_model(config_lib.get_config(), 10)
  tx = optim.create_optimizer(config_lib.get_config(), 10)
  return steps.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))


def _custom_calls(fn, state) -> int:
  text = fn.lower(state, BATCH, jax.random.key(0)).as_text()
  return text.count('@jaxcls_conv_block_forward(')


@pytest.fixture
def fresh(monkeypatch, tmp_path):
  """'auto' with an empty decision cache and no decisions in memory."""
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setattr(choice, '_memo', {})
  monkeypatch.setattr(accel.policy, '_taken', {})
  monkeypatch.setattr(accel.policy, '_settings', accel.Settings(kernels='auto'))
  # Decisions are cached whatever else loads this machine (the test suite).
  monkeypatch.setattr(choice, 'BUSY_SHARE', float('inf'))
  return tmp_path / 'cache'


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@CPU_ONLY
def test_accel_jit_follows_the_settings_call_by_call():
  """The jit-cache trap: plain jax.jit keeps its first trace's path."""
  state = _state()
  plain = jax.jit(steps.train_step)
  ours = accel.jit(steps.train_step)
  with accel.using(kernels='on'):
    assert _custom_calls(plain, state) == 2
    assert _custom_calls(ours, state) == 2
  with accel.disabled():
    assert _custom_calls(plain, state) == 2  # The trap: a cached trace.
    assert _custom_calls(ours, state) == 0
  with accel.using(kernels='on'):
    assert _custom_calls(ours, state) == 2


def test_bad_setting_is_one_line():
  with pytest.raises(ValueError, match=r"JAXCLS_KERNELS='fast'.*auto, on, off"):
    accel.Settings(kernels='fast')


def test_a_bad_environment_setting_is_one_line_from_a_command(
  monkeypatch, capsys
):
  from jaxcls.commands import cli

  monkeypatch.setenv('JAXCLS_KERNELS', 'fast')
  monkeypatch.setattr(accel.policy, '_settings', None)
  with pytest.raises(SystemExit) as e:
    cli.call(accel.settings)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [
    "error: JAXCLS_KERNELS='fast' is not one of auto, on, off; set one of "
    'those (or unset it: auto)'
  ]


@CPU_ONLY
def test_auto_runs_the_kernel_only_where_it_measured_faster(fresh, monkeypatch):
  timings = {'kernel': 2.0, 'xla': 1.0}  # The kernel loses here.
  calls = []

  def fake_measure(kernel_fn, xla_fn, shapes, wrt=None):
    calls.append(len(shapes))
    return dict(timings)

  monkeypatch.setattr(choice, 'measure', fake_measure)
  state = _state()
  step = accel.jit(steps.train_step)
  assert _custom_calls(step, state) == 0
  assert len(calls) == 2  # One measurement per block shape.
  (saved,) = [f for f in os.listdir(fresh) if f.startswith('choices-')]
  with open(fresh / saved) as f:
    stored = json.load(f)
  assert {v['path'] for v in stored.values()} == {'xla'}
  assert all(v['cpu'] == choice.cpu_model() for v in stored.values())

  # A later process (here: an empty memo) reuses the file, measures nothing.
  monkeypatch.setattr(choice, '_memo', {})
  timings.update(kernel=0.5)  # It would win now, but the file decides.
  assert _custom_calls(accel.jit(steps.train_step), state) == 0
  assert len(calls) == 2
  assert {v['source'] for v in accel.path()['choices'].values()} == {'cached'}

  # Where it measures faster, it runs.
  os.remove(fresh / saved)
  monkeypatch.setattr(choice, '_memo', {})
  assert _custom_calls(accel.jit(steps.train_step), state) == 2
  assert len(calls) == 4


@CPU_ONLY
def test_a_real_measurement_times_both_paths():
  f32 = jnp.float32
  shapes = (
    jax.ShapeDtypeStruct((8, 8, 8, 16), f32),
    jax.ShapeDtypeStruct((3, 3, 16, 16), f32),
    jax.ShapeDtypeStruct((16,), f32),
  )
  for wrt in ((0, 1, 2), ()):
    t = choice.measure(
      cpu_conv.conv_relu_pool, models.conv_relu_pool, shapes, wrt
    )
    assert set(t) == {'kernel', 'xla'}
    assert all(0 < v < 1 for v in t.values()), t


@CPU_ONLY
@pytest.mark.slow  # Trains a tiny run.
def test_a_resume_takes_the_recorded_path_or_says_so(
  fresh, monkeypatch, tmp_path, caplog
):
  """The path is recorded in the workdir; a resume follows it over 'auto'."""
  monkeypatch.setattr(
    choice, 'measure', lambda *a, **k: {'kernel': 2.0, 'xla': 1.0}
  )
  workdir = str(tmp_path / 'w')
  config = tiny_config(train_examples=256, num_epochs=1)
  first = train.train_and_evaluate(config, workdir)
  recorded = workdir_lib.read_kernels(workdir)
  assert recorded['kernels'] == 'auto'
  assert {v['path'] for v in recorded['choices'].values()} == {'xla'}
  assert first['kernels'] == f'auto: 0 kernel, {len(recorded["choices"])} xla'

  # The same workdir on a machine where the kernel measures faster: the
  # recorded path wins, so the run is the one it was.
  monkeypatch.setattr(choice, '_memo', {})
  for name in os.listdir(fresh):
    if name.startswith('choices-'):
      os.remove(fresh / name)
  monkeypatch.setattr(
    choice, 'measure', lambda *a, **k: {'kernel': 0.5, 'xla': 1.0}
  )
  state = _state()
  with accel.following(recorded):
    assert _custom_calls(accel.jit(steps.train_step), state) == 0
  assert _custom_calls(accel.jit(steps.train_step), state) == 2

  # A recorded kernel that cannot run here: one line, XLA's ops.
  kernel_path = {
    'choices': {k: {'path': 'kernel'} for k in recorded['choices']}
  }
  monkeypatch.setattr(
    cpu_conv, '_state', {'tried': True, 'library': None, 'error': 'no g++'}
  )
  monkeypatch.setattr(accel.policy, '_warned', set())
  warnings = caplog.at_level(logging.WARNING, logger='jaxcls')
  with warnings, accel.following(kernel_path):
    assert _custom_calls(accel.jit(steps.train_step), state) == 0
  lines = [r.getMessage() for r in caplog.records]
  lines = [line for line in lines if 'no g++' in line]
  assert lines and all('\n' not in line for line in lines)
  assert "continues on XLA's ops, not bit for bit" in lines[0]


def test_a_damaged_record_is_one_line(tmp_path):
  (tmp_path / 'kernels.json').write_text('[1, 2]')
  with pytest.raises(ValueError, match='kernels.json is not a JSON object'):
    workdir_lib.read_kernels(str(tmp_path))


def test_the_cache_is_private(monkeypatch, tmp_path):
  home = tmp_path / 'home'
  monkeypatch.delenv('JAXCLS_CACHE', raising=False)
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  monkeypatch.setenv('HOME', str(home))
  folder = build.private_dir()
  assert folder == str(home / '.cache' / 'jaxcls')
  assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700

  os.chmod(folder, 0o777)  # World-writable: anyone could plant a library.
  with pytest.raises(build.UnsafeCacheError, match='chmod 700'):
    build.private_dir()
  os.chmod(folder, 0o700)
  monkeypatch.setattr(os, 'getuid', lambda: os.stat(folder).st_uid + 1)
  with pytest.raises(build.UnsafeCacheError, match='owned by uid'):
    build.private_dir()


def test_no_home_means_no_relative_cache(monkeypatch):
  for name in ('JAXCLS_CACHE', 'XDG_CACHE_HOME', 'HOME'):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(build.UnsafeCacheError, match='set JAXCLS_CACHE'):
    build.cache_dir()
  monkeypatch.setenv('JAXCLS_CACHE', 'relative/cache')
  with pytest.raises(build.UnsafeCacheError, match='not an absolute path'):
    build.cache_dir()


@CPU_ONLY
@pytest.mark.slow  # Builds the kernel twice.
def test_a_tampered_library_is_rebuilt_not_loaded(monkeypatch, tmp_path):
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  path = build.build('conv_cpu')
  with open(path + '.sha256') as f:
    digest = f.read()
  with open(path, 'ab') as f:
    f.write(b'planted')
  assert not build._verified(path)
  assert build.build('conv_cpu') == path  # Rebuilt in place.
  assert build._verified(path)
  with open(path + '.sha256') as f:
    assert f.read() == digest


@CPU_ONLY
def test_an_unsafe_cache_falls_back_to_xla_in_one_line(
  monkeypatch, tmp_path, caplog
):
  cache = tmp_path / 'cache'
  cache.mkdir(mode=0o777)
  os.chmod(cache, 0o777)
  monkeypatch.setenv('JAXCLS_CACHE', str(cache))
  monkeypatch.setattr(
    cpu_conv, '_state', {'tried': False, 'library': None, 'error': None}
  )
  with caplog.at_level(logging.WARNING, logger='jaxcls'):
    assert not cpu_conv.available()
  assert 'chmod 700' in cpu_conv.unavailable_reason()
  with accel.using(kernels='on'):
    assert _custom_calls(accel.jit(steps.train_step), _state()) == 0


@pytest.mark.slow
def test_the_core_suite_runs_without_the_accelerators(tmp_path):
  """Deleting jaxcls/accel/ leaves a working library on XLA's ops."""
  shutil.copytree(
    os.path.join(ROOT, 'jaxcls'),
    tmp_path / 'jaxcls',
    ignore=shutil.ignore_patterns('accel', '__pycache__'),
  )
  shutil.copytree(os.path.join(ROOT, 'experiments'), tmp_path / 'experiments')
  shutil.copytree(os.path.join(ROOT, 'tests'), tmp_path / 'tests')
  shutil.copy(os.path.join(ROOT, 'pyproject.toml'), tmp_path)
  core = [
    'tests/test_models.py',
    'tests/test_train_step.py',
    'tests/test_optim.py',
    'tests/test_activations.py',
  ]
  env = dict(os.environ, PYTHONPATH=str(tmp_path))
  env.pop('JAXCLS_KERNELS', None)
  done = subprocess.run(
    [
      *(sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'),
      *('-m', 'not slow', *core),
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  assert ' passed' in done.stdout
  probe = subprocess.run(
    [
      sys.executable,
      '-c',
      'import jaxcls; print(jaxcls.accel, jaxcls.__file__)',
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert probe.stdout.startswith('None ' + str(tmp_path)), probe.stderr
  np.testing.assert_equal(probe.returncode, 0)


@CPU_ONLY
@pytest.mark.slow
def test_compiler_flags_are_part_of_the_build_key(monkeypatch, tmp_path):
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('CXX', raising=False)
  default = build.build('rnn_cpu')
  monkeypatch.setenv('CXX', 'c++ -O1')
  assert build.build('rnn_cpu') != default


def test_a_full_disk_during_the_build_says_so(monkeypatch, tmp_path):
  monkeypatch.setenv('JAXCLS_CACHE', str(tmp_path / 'cache'))
  real_run = subprocess.run

  def run(cmd, **kwargs):
    if '--version' in cmd:
      return real_run(cmd, **kwargs)
    return subprocess.CompletedProcess(
      cmd,
      1,
      '',
      '/usr/bin/ld: final link failed: error writing output\n'
      'collect2: error: ld returned 1 exit status\n'
      '/tmp/x.so: No space left on device\n',
    )

  monkeypatch.setattr(build.subprocess, 'run', run)
  with pytest.raises(RuntimeError, match='No space left on device'):
    build.build('rnn_cpu')


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@CPU_ONLY
def test_a_sequence_of_no_steps_takes_the_fused_scan():
  from jaxcls.models import recurrent

  layer = recurrent.Recurrent('lstm', 16)
  xs = jnp.ones((0, 2, 4))
  params = layer.init(jax.random.key(0), jnp.ones((3, 2, 4)))
  with accel.using(kernels='on'):
    out = jax.jit(layer.apply)(params, xs)
  assert jax.tree.leaves(out)[0].shape[0] == 0
