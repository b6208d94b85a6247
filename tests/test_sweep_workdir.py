"""A sweep on a workdir that holds another sweep: refused before training.

A rerun of ``experiments.sweep`` with another grid or another shared field
on the same workdir used to train every member, then fail on the best
member's checkpoint, leaving the old ``sweep.json``. It now stops at once:
one ``error:`` line naming the workdir, what differs and the fix, exit 2,
nothing trained and no file of the workdir changed.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # Trains the first sweep.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = (
  '--config.train_examples=256',
  '--config.num_epochs=1',
  '--config.sweep_weight_decay=0',
)


def _sweep(workdir: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'experiments.sweep', f'--workdir={workdir}']
    + [*TINY, *flags],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=600,
  )


def _files(workdir: str) -> dict:
  """Each file's path -> (size, mtime), less the lock (every run takes it)."""
  found = {}
  for folder, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(folder, name)
      if path != os.path.join(workdir, 'lock'):
        st = os.stat(path)
        found[os.path.relpath(path, workdir)] = (st.st_size, st.st_mtime_ns)
  return found


@pytest.fixture(scope='module')
def swept_workdir(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp('sweep'))
  done = _sweep(workdir, '--config.sweep_learning_rate=1e-3')
  assert done.returncode == 0, done.stderr
  return workdir


@pytest.mark.parametrize(
  'flags, differs',
  [
    (('--config.sweep_learning_rate=3e-3',), 'sweep_learning_rate: 0.001 -> '),
    (
      ('--config.sweep_learning_rate=1e-3', '--config.dropout_rate=0.25'),
      'dropout_rate: 0.0 -> 0.25',
    ),
  ],
  ids=['grid', 'shared_field'],
)
def test_another_sweep_is_refused_before_any_member_trains(
  swept_workdir, flags, differs
):
  before = _files(swept_workdir)
  with open(os.path.join(swept_workdir, 'sweep.json')) as f:
    saved = f.read()
  done = _sweep(swept_workdir, *flags)
  assert done.returncode == 2, done.stderr
  assert 'Traceback' not in done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr
  assert swept_workdir in lines[0] and differs in lines[0], lines[0]
  assert 'another --workdir' in lines[0]
  # No member trained (the sweep logs each population it trains) and the
  # workdir is as the first sweep left it.
  assert 'Population of' not in done.stdout, done.stdout
  assert _files(swept_workdir) == before
  with open(os.path.join(swept_workdir, 'sweep.json')) as f:
    assert f.read() == saved
