"""Never lose work: kills, signals, interrupted saves, NaNs and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxcls import models, optim
from jaxcls.data import local_files as local_data
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
# 2 epochs x 64 steps, a checkpoint every 8 steps (mid-epoch ones included).
RUN = [
  '--config.train_examples=4096',
  '--config.num_epochs=2',
  '--config.checkpoint_every_steps=8',
  '--config.dropout_rate=0.3',
]


class Run(subprocess.Popen):
  """run_tiny.py in a subprocess; output goes to files (a full pipe that
  nobody reads would block the child)."""

  def __init__(self, workdir, *flags):
    os.makedirs(workdir, exist_ok=True)
    self.paths = [
      os.path.join(workdir, f'{n}.{time.monotonic_ns()}.log')
      for n in ('out', 'err')
    ]
    self.files = [open(p, 'w+') for p in self.paths]  # noqa: SIM115
    super().__init__(
      [
        sys.executable,
        os.path.join(HERE, 'run_tiny.py'),
        str(workdir),
        *RUN,
        *flags,
      ],
      cwd=ROOT,
      stdout=self.files[0],
      stderr=self.files[1],
      text=True,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
    )

  def communicate(self, timeout=None):
    self.wait(timeout)
    texts = []
    for f in self.files:
      f.seek(0)
      texts.append(f.read())
      f.close()
    return tuple(texts)


start = Run


def finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, out + err[-3000:]
  return out.split('RESULT ')[1].split()[0]  # params_sha256


def saved_steps(workdir):
  folder = os.path.join(workdir, 'checkpoints', 'latest')
  return (
    sorted(int(n) for n in os.listdir(folder) if n.isdigit())
    if (os.path.isdir(folder))
    else []
  )


def wait_for_checkpoint(proc, workdir, at_least):
  """Waits until a checkpoint of step >= at_least exists (training goes on)."""
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline:
    assert proc.poll() is None, 'finished before it could be interrupted'
    if saved_steps(workdir) and saved_steps(workdir)[-1] >= at_least:
      return
    time.sleep(0.02)
  raise TimeoutError


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The params_sha256 of the same run, never interrupted."""
  return finish(start(tmp_path_factory.mktemp('ref')))


def test_same_seed_and_config_are_bit_identical(reference, tmp_path):
  assert finish(start(tmp_path)) == reference


def test_sigkill_twice_then_resume_is_bit_identical(reference, tmp_path):
  # First kill early in epoch 1, the second in the middle of epoch 2: the
  # steps since the last checkpoint are lost and done again, identically.
  for at_least in (8, 80):
    proc = start(tmp_path)
    wait_for_checkpoint(proc, tmp_path, at_least)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
  assert finish(start(tmp_path)) == reference


# A ResNet with BatchNorm, an EMA, mixup and label smoothing: every piece of
# state and randomness that the train step gained for issue 16.
RESNET = [
  '--config.model=resnet',
  '--config.resnet_depth=8',
  '--config.ema_decay=0.99',
  '--config.mixup_alpha=0.2',
  '--config.label_smoothing=0.1',
  '--config.augment=crop_flip',
  '--config.train_examples=1024',
  # Half width and 2% of the training split for validation: the
  # evaluations, not the 32 steps, are most of this test's time.
  '--config.resnet_width=0.5',
  '--config.validation_percent=2',
]


def test_sigkill_with_batchnorm_and_ema_resumes_bit_identically(tmp_path):
  reference = finish(start(tmp_path / 'ref', *RESNET))
  with open(tmp_path / 'ref' / 'results.json') as f:
    assert json.load(f)['test_accuracy'] > 0.3  # A short real run: 3x chance.
  proc = start(tmp_path / 'run', *RESNET)
  wait_for_checkpoint(proc, tmp_path / 'run', 8)
  proc.kill()
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert finish(start(tmp_path / 'run', *RESNET)) == reference


@pytest.mark.parametrize(
  'sig,code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_sigterm_and_sigint_save_the_current_step_and_resume(
  reference, tmp_path, sig, code
):
  proc = start(tmp_path)
  wait_for_checkpoint(proc, tmp_path, 16)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == code, err
  line = [ln for ln in out.splitlines() if 'saved a checkpoint' in ln]
  assert len(line) == 1 and 'Traceback' not in err
  step = int(line[0].split('at step ')[1].split()[0])
  assert line[0].startswith(f'{signal.Signals(sig).name}: ')
  assert saved_steps(tmp_path)[-1] == step  # the step it stopped at
  if sig == signal.SIGTERM:  # (SIGINT takes the same path from here on.)
    assert finish(start(tmp_path)) == reference


def test_an_interrupted_save_is_never_loaded_and_is_cleaned_up(
  reference, tmp_path
):
  proc = start(tmp_path)
  wait_for_checkpoint(proc, tmp_path, 24)
  proc.kill()
  proc.wait()
  last_good = saved_steps(tmp_path)[-1]
  # What a crash in the middle of saving step 1000 leaves behind: Orbax's
  # temporary folder, never renamed to '1000'.
  latest = os.path.join(tmp_path, 'checkpoints', 'latest')
  partial = os.path.join(latest, '1000.orbax-checkpoint-tmp-1795730000000')
  os.makedirs(os.path.join(partial, 'state'))
  with open(os.path.join(partial, 'state', 'garbage'), 'wb') as f:
    f.write(b'\0' * 100)
  proc = start(tmp_path)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  assert f'Resuming from step {last_good}' in out
  assert out.split('RESULT ')[1].split()[0] == reference
  assert not os.path.exists(partial)


def cli(tmp_path, *flags):
  return subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.fashion_mnist',
      f'--workdir={tmp_path}',
      '--config.train_examples=2048',
      '--config.num_epochs=1',
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
  )


def test_nonfinite_loss_stops_with_the_step_by_default(tmp_path):
  proc = cli(tmp_path, '--config.optimizer=sgd', '--config.learning_rate=1e6')
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: the training loss became non-finite at step ')
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'checkpoints' / 'best' / '32')


def test_skip_policy_skips_then_stops_after_the_limit(tmp_path):
  proc = cli(
    tmp_path,
    '--config.optimizer=sgd',
    '--config.learning_rate=1e6',
    '--config.nonfinite_policy=skip',
    '--config.max_nonfinite_steps=3',
  )
  assert proc.returncode == 2
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith('error: more than 3 non-finite steps in a row')
  )


def test_skip_policy_leaves_params_unchanged_on_a_nan_gradient():
  c = tiny_config(nonfinite_policy='skip', max_nonfinite_steps=5)
  tx = optim.create_optimizer(c, 10)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  updates, state = tx.update(
    {'w': jnp.array([1.0, jnp.nan, 0.0])}, state, params
  )
  np.testing.assert_array_equal(updates['w'], 0.0)
  updates, state = tx.update({'w': jnp.ones(3)}, state, params)
  assert np.all(np.asarray(updates['w']) < 0)


@pytest.mark.parametrize(
  'flag,message',
  [
    (
      '--config.learnig_rate=1',
      "unknown config key 'learnig_rate'; did you mean 'learning_rate'?",
    ),
    ('--config.learning_rate=0', 'learning_rate must be > 0'),
    ('--config.batch_size=-4', 'batch_size must be > 0'),
    ('--config.dataset=imagenet', "unknown dataset 'imagenet'"),
    ('--config.model=vgg', "unknown model 'vgg'"),
    ('--config.optimizer=lion', "unknown optimizer 'lion'"),
  ],
)
def test_bad_config_is_one_line_before_anything_is_touched(
  tmp_path, flag, message
):
  proc = cli(tmp_path / 'w', flag)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ') and message in lines[-1]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_workdir_of_another_config_is_refused_untouched(tmp_path):
  assert cli(tmp_path).returncode == 0
  before = sorted(os.listdir(tmp_path / 'checkpoints' / 'latest'))
  proc = cli(tmp_path, '--config.activation=tanh')
  assert proc.returncode == 2
  assert 'was saved by a different model or config' in proc.stderr
  # It names the field that differs and the flag that takes the saved value.
  assert 'activation: relu -> tanh' in proc.stderr
  assert '--config.activation=relu' in proc.stderr
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == before


def test_corrupt_dataset_files_are_one_clear_line(tmp_path):
  folder = tmp_path / 'idx'
  folder.mkdir()
  for name in (
    'train-images-idx3-ubyte',
    'train-labels-idx1-ubyte',
    't10k-images-idx3-ubyte',
    't10k-labels-idx1-ubyte',
  ):
    (folder / name).write_bytes(b'\x00\x00\x08\x03garbage')
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.fashion_mnist',
      f'--workdir={tmp_path / "w"}',
      f'--config.data_dir={tmp_path / "dd"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={
      **os.environ,
      'TF_CPP_MIN_LOG_LEVEL': '3',
      'JAXCLS_FASHION_MNIST_DIR': str(folder),
    },
  )
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and str(folder) in last
  assert 'Traceback' not in proc.stderr


def small_state(shape=(28, 28, 1)):
  c = tiny_config()
  return train.create_train_state(
    jax.random.key(0),
    models.create_model(c, 10),
    optim.create_optimizer(c, 1),
    shape,
  )


@pytest.mark.parametrize(
  'batch,message',
  [
    (
      {
        'image': np.zeros((4, 28, 28, 1), np.uint8),
        'label': np.array([0, 1, 10, 2]),
      },
      r'labels must be in 0\.\.9',
    ),
    (
      {
        'image': np.zeros((4, 28, 28, 1), np.uint8),
        'label': np.array([0, -1, 1, 2]),
      },
      r'labels must be in 0\.\.9',
    ),
    (
      {
        'image': np.zeros((4, 28, 28, 1), np.float32),
        'label': np.zeros(4, np.int32),
      },
      'images must be uint8',
    ),
    (
      {
        'image': np.zeros((4, 28, 28), np.uint8),
        'label': np.zeros(4, np.int32),
      },
      r'\(batch, height, width, channels\)',
    ),
    (
      {
        'image': np.zeros((4, 32, 32, 3), np.uint8),
        'label': np.zeros(4, np.int32),
      },
      'do not fit this model',
    ),
    (
      {
        'image': np.zeros((4, 28, 28, 1), np.uint8),
        'label': np.zeros(3, np.int32),
      },
      'labels must be integers of shape',
    ),
  ],
)
def test_library_api_rejects_bad_batches(batch, message):
  state = small_state()
  with pytest.raises(ValueError, match=message):
    train.train_step(state, batch, jax.random.key(0))
  if 'labels must be in' not in message:  # values are not visible under jit
    with pytest.raises(ValueError, match=message):
      jax.jit(train.train_step)(state, batch, jax.random.key(0))
