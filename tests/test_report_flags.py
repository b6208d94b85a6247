"""The report's numeric flag: a negative --num_misclassified is refused.

It used to be accepted (a slice ``[:-1]`` then showed all misclassified
images but one). It is now one ``error:`` line and exit 2, before the
workdir is read, so these tests need no trained workdir.
"""

import os
import subprocess
import sys

import pytest

from jaxcls.commands import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # Starts a process.
@pytest.mark.parametrize('value', ['-1', '-25'])
def test_cli_refuses_a_negative_count_in_one_line_before_loading(
  tmp_path, value
):
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.report',
      f'--workdir={tmp_path}',
      f'--num_misclassified={value}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
  )
  assert done.returncode == 2, done.stderr
  assert 'Traceback' not in done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), done.stderr
  assert f'--num_misclassified={value}' in lines[0], lines[0]
  assert 'checkpoint' not in lines[0]  # Refused before the workdir is read.
  assert os.listdir(tmp_path) == []


def test_report_refuses_a_negative_count_before_reading_the_workdir(tmp_path):
  with pytest.raises(ValueError, match='num_misclassified must be 0 or more'):
    report.report(str(tmp_path), num_misclassified=-1)
  assert os.listdir(tmp_path) == []
