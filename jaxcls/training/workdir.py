"""The workdir of a run: one writer at a time, and its ``results.json``.

A training (or eval-only) run holds an exclusive lock on ``W/lock`` for as
long as it runs. The lock is an ``flock`` on an open file, so the kernel
releases it when the process ends in any way, ``kill -9`` included: a crashed
run never leaves a workdir stuck. A second run on the same workdir stops at
once with one line, before it reads or writes anything else. Readers
(``report``, ``predict``, ``export``) take no lock: they open checkpoints
read-only (``checkpoint.make_manager(..., read_only=True)``) and never
delete or rename anything, so they can run against a live workdir.

With several processes (one run over many hosts) only process 0 takes the
lock; the others share the run. ``flock`` works on local filesystems and on
most network filesystems that support POSIX locks.
"""

import contextlib
import fcntl
import json
import os
import socket
import time


class WorkdirBusyError(RuntimeError):
  """Another run is writing to this workdir."""


@contextlib.contextmanager
def lock(workdir: str, take: bool = True):
  """Holds the workdir's lock for the duration of the ``with`` block.

  Raises WorkdirBusyError, naming the holder's pid and host, if another
  process holds it; OSError (with the path) if the workdir is not writable.
  ``take=False`` (processes other than 0) does nothing.
  """
  if not take:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
    os.close(fd)
    raise WorkdirBusyError(
      f'workdir {workdir} is in use by another run ({holder or "unknown"}); '
      'wait for it to finish, or use another --workdir'
    ) from None
  try:
    # The file is left in place on exit: unlinking it would let a third run
    # lock a new file while a second still holds the old one.
    os.ftruncate(fd, 0)
    os.pwrite(
      fd,
      f'pid {os.getpid()} on {socket.gethostname()} since '
      f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode(),
      0,
    )
    yield
  finally:
    os.close(fd)  # Releases the lock.


def results_path(workdir: str) -> str:
  return os.path.join(workdir, 'results.json')


def read_results(workdir: str) -> dict:
  """The workdir's ``results.json`` ({} if absent).

  Raises ValueError with the file's path and the fix if it is not a JSON
  object; a run checks this before training, not after.
  """
  path = results_path(workdir)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      results = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
      f'{path} is not valid JSON ({e.__class__.__name__}: '
      f'{str(e)[:80]}); delete or move it and run again (it is '
      'rewritten at the end of the run)'
    ) from None
  if not isinstance(results, dict):
    raise ValueError(
      f'{path} does not hold a JSON object; delete or move it and run again'
    )
  return results


def kernels_path(workdir: str) -> str:
  return os.path.join(workdir, 'kernels.json')


def read_kernels(workdir: str) -> dict | None:
  """The accelerated path a run recorded (``kernels.json``), or None.

  Raises ValueError in one line if the file is not a JSON object.
  """
  path = kernels_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError):
    recorded = None
  if not isinstance(recorded, dict):
    raise ValueError(
      f'{path} is not a JSON object; delete it to let this run choose its '
      'path again (a resume may then not repeat bit for bit)'
    )
  return recorded


def write_kernels(workdir: str, recorded: dict) -> None:
  """Writes the path a run took (``fastpath.path()``), atomically."""
  path = kernels_path(workdir)
  with open(path + '.tmp', 'w') as f:
    json.dump(recorded, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)


def inputs_path(workdir: str) -> str:
  return os.path.join(workdir, 'inputs.json')


def write_inputs(workdir: str, inputs: dict) -> None:
  """Saves how a sequence run made its inputs (``Data.inputs``: the word
  list or 'bytes', max_len, a series' channel mean and std, the buckets), so
  that predict and export encode new text or series the same way."""
  os.makedirs(workdir, exist_ok=True)
  tmp = inputs_path(workdir) + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(inputs, f)
  os.replace(tmp, inputs_path(workdir))


def read_inputs(workdir: str) -> dict | None:
  """The run's ``inputs.json`` (see :func:`write_inputs`), None if absent."""
  try:
    with open(inputs_path(workdir)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def write_results(workdir: str, results: dict) -> None:
  """Merges ``results`` into ``results.json``, atomically.

  Keys of an earlier run (e.g. the training numbers when ``--eval_only``
  writes the test score) are kept. A file that became unreadable during the
  run is moved aside to ``results.json.corrupt`` rather than failing the run
  at its very end.
  """
  path = results_path(workdir)
  try:
    merged = read_results(workdir)
  except ValueError:
    os.replace(path, path + '.corrupt')
    merged = {}
  merged.update(results)
  with open(path + '.tmp', 'w') as f:
    json.dump(merged, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)  # Atomic: never a half-written file.
