"""A multi-host run that loses one host: a signal that reaches one process
only, and a process that dies. Two processes on this machine, gloo."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_faults import HERE, ROOT, RUN, saved_steps
from test_parallel import _free_port

pytestmark = pytest.mark.slow  # Starts processes: the full tier.

# 2 epochs x 64 steps of 32, a checkpoint every 8 steps; several processes
# agree on a signal every guards.STOP_CHECK_STEPS (32) steps.
FLAGS = [
  *RUN,
  '--config.train_examples=2048',
  '--config.batch_size=32',
  '--config.distributed=true',
  '--config.num_data_shards=2',
]


class Pair:
  """Both processes of one two-process run of run_tiny.py (or the CLI)."""

  def __init__(self, workdir, cli=False, extra_env=None):
    os.makedirs(workdir, exist_ok=True)
    port = _free_port()
    self.logs, self.procs = [], []
    for i in range(2):
      log = open(os.path.join(workdir, f'p{i}.{time.monotonic_ns()}.log'), 'w+')  # noqa: SIM115
      argv = (
        ['-m', 'experiments.fashion_mnist', f'--workdir={workdir}']
        if cli
        else [os.path.join(HERE, 'run_tiny.py'), str(workdir)]
      )
      env = {
        **os.environ,
        'TF_CPP_MIN_LOG_LEVEL': '3',
        'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
        'JAX_NUM_PROCESSES': '2',
        'JAX_PROCESS_ID': str(i),
        **(extra_env or {}),
      }
      self.procs.append(
        subprocess.Popen(
          [sys.executable, *argv, *FLAGS],
          cwd=ROOT,
          stdout=log,
          stderr=subprocess.STDOUT,
          text=True,
          env=env,
        )
      )
      self.logs.append(log)

  @staticmethod
  def _tail(log) -> str:
    log.seek(0)
    return log.read()[-3000:]

  def wait(self, timeout):
    deadline = time.monotonic() + timeout
    try:
      for p in self.procs:
        p.wait(max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      for p in self.procs:  # No process outlives its test.
        p.kill()
        p.wait()
      raise AssertionError(
        f'still running after {timeout} s:\n'
        + '\n'.join(self._tail(log) for log in self.logs)
      ) from None
    texts = []
    for log in self.logs:
      log.seek(0)
      texts.append(log.read())
      log.close()
    return [p.returncode for p in self.procs], texts


def _params(workdir):
  with np.load(os.path.join(workdir, 'params.npz')) as f:
    return {k: f[k] for k in f.files}


def _wait_for(pair, workdir, at_least):
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline:
    assert all(p.poll() is None for p in pair.procs), 'ended too soon'
    if saved_steps(workdir) and saved_steps(workdir)[-1] >= at_least:
      return
    time.sleep(0.02)
  raise TimeoutError


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ref')
  codes, texts = Pair(workdir).wait(600)
  assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
  return _params(workdir)


@pytest.mark.parametrize(
  'target,moment',
  [(1, 'step 16'), (0, 'validation:1'), (1, 'save:3')],
  ids=['p1-mid-epoch', 'p0-during-validation', 'p1-during-a-save'],
)
def test_a_signal_to_one_host_stops_both_at_one_step(
  reference, tmp_path, target, moment
):
  """SIGTERM to one process only: mid-epoch (once step 16 is saved), from
  inside its first validation, or from inside its third checkpoint save (a
  mid-epoch one); the last two by run_tiny.py's $JAXCLS_TEST_SIGTERM."""
  if moment.startswith('step '):
    pair = Pair(tmp_path)
    _wait_for(pair, tmp_path, int(moment.split()[1]))
    pair.procs[target].send_signal(signal.SIGTERM)
  else:
    name, nth = moment.split(':')
    pair = Pair(
      tmp_path, extra_env={'JAXCLS_TEST_SIGTERM': f'{name}:{target}:{nth}'}
    )
  start = time.monotonic()
  if moment.startswith('step '):  # From the signal: the stop is prompt.
    codes, texts = pair.wait(120)
    assert time.monotonic() - start < 60
  else:  # From the start: the processes load, compile and train first.
    codes, texts = pair.wait(400)
  assert codes == [143, 143], texts[0][-3000:] + texts[1][-3000:]
  line = [ln for ln in texts[0].splitlines() if 'saved a checkpoint' in ln]
  assert len(line) == 1 and line[0].startswith('SIGTERM: ')
  assert not any('saved a checkpoint' in ln for ln in texts[1].splitlines())
  assert 'Traceback' not in texts[0] + texts[1]
  step = int(line[0].split('at step ')[1].split()[0])
  assert saved_steps(tmp_path)[-1] == step  # Both saved that step.

  codes, texts = Pair(tmp_path).wait(600)  # The same command resumes.
  assert codes == [0, 0], texts[0][-3000:]
  assert f'Resuming from step {step}' in texts[0]
  got = _params(tmp_path)
  assert got.keys() == reference.keys()
  for k in got:
    np.testing.assert_array_equal(got[k], reference[k], err_msg=k)


def test_a_host_that_dies_ends_the_other_with_one_line(tmp_path):
  pair = Pair(tmp_path, cli=True)
  _wait_for(pair, tmp_path, 16)
  pair.procs[1].send_signal(signal.SIGKILL)
  start = time.monotonic()
  codes, texts = pair.wait(180)
  assert time.monotonic() - start < 120
  assert codes[0] == 2, texts[0][-3000:]
  errors = [ln for ln in texts[0].splitlines() if ln.startswith('error: ')]
  assert len(errors) == 1, texts[0][-3000:]
  assert 'lost contact with process 1 of this 2-process run' in errors[0]
  assert 'Traceback' not in texts[0]
