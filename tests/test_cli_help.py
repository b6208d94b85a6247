"""Every command's --help prints its usage and exits 0 (absl's exits 1)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize(
  'module',
  ['fashion_mnist', 'image_folder', 'sweep', 'report', 'predict', 'export'],
)
def test_help_exits_zero(module):
  done = subprocess.run(
    [sys.executable, '-m', f'experiments.{module}', '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'Traceback' not in done.stderr
  assert '--' in done.stdout + done.stderr  # The flags are listed.
  from experiments import results

  measured = results.measured(module)
  assert not measured or measured in done.stdout + done.stderr
