"""The command line shared by every experiment: flags in, one clear line out.

An experiment module calls ``run(get_config, 'name')`` (training) or
``run(get_config, 'name', main=fn)`` (another action on the same config, e.g.
a sweep). Flags: ``--config.<field>=value`` overrides any config field,
``--workdir`` (default ``runs/<name>``) holds checkpoints and results,
``--eval_only`` scores the best checkpoint on the test split. Tools without a
config (report, predict, export) use :func:`app_run` and :func:`call`.

Expected failures (bad flags or config, missing dataset, unusable checkpoint
or workdir, non-finite loss, OS errors such as a full disk, Ctrl-C outside
the training loop) print one ``error: ...`` line to stderr and exit with
status 2 (130 for Ctrl-C); they never print a traceback.
"""

import difflib
import os
import sys
import threading
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

EXPECTED_ERRORS = (ValueError, RuntimeError, OSError)


def fail(message) -> NoReturn:
  """Prints ``error: message`` (one line) to stderr and exits with 2."""
  text = ' '.join(str(message).split())  # One line, whatever the message.
  print(f'error: {text}', file=sys.stderr)
  sys.exit(2)


def quiet_logs() -> None:
  """Keeps the console for the training log and the one-line errors."""
  # TF and absl are chatty on import.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # TF only decodes data here; its oneDNN kernels are not worth a log line.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  # Orbax logs a failed save with its whole traceback at ERROR; the save's
  # error is reported as one line by jaxcls.training.checkpoint instead.
  logging.set_verbosity(logging.FATAL)


def call(fn, *args, **kwargs):
  """Runs ``fn``, turning expected failures into one line and an exit."""
  try:
    return fn(*args, **kwargs)
  except EXPECTED_ERRORS as e:
    fail(e)
  except KeyboardInterrupt:
    print(
      'error: interrupted (Ctrl-C) before training started or after it '
      'ended; no checkpoint was changed. Run the same command to start '
      'again or resume.',
      file=sys.stderr,
    )
    sys.exit(130)


_HELP = ('--help', '-h', '-?', '--helpshort', '--helpfull', '--helpxml')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing: a bad flag is one line and exit 2; help exits 0
  (absl's own help flag exits 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e}; see --help')
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP for a in argv[1:]):
      sys.exit(0)
    raise


class _DropClosedLoopTracebacks:
  """stderr, less the tracebacks of 'Event loop is closed' from background
  threads.

  When an Orbax save fails (a full disk), TensorStore's writes still in
  flight call back into the save's asyncio loop after it has closed, and
  Python prints each such callback's traceback from a native thread. They
  say nothing the one error line does not. Lines are assembled per thread
  (the threads' writes interleave); from threads other than the main one,
  exactly the lines of that traceback are dropped, and all else passes.
  """

  _NOISE = (
    'Traceback (most recent call last):',
    "raise RuntimeError('Event loop is closed')",
    'RuntimeError: Event loop is closed',
    'self._check_closed()',
  )

  def __init__(self, stream):
    self._stream, self._pending = stream, {}

  def write(self, text: str) -> int:
    thread = threading.get_ident()
    pending = self._pending.get(thread, '') + text
    *lines, self._pending[thread] = pending.split('\n')
    for line in lines:
      if thread == threading.main_thread().ident or not self._noise(line):
        self._stream.write(line + '\n')
    return len(text)

  def _noise(self, line: str) -> bool:
    line = line.strip()
    return line in self._NOISE or (
      line.startswith('File ') and 'asyncio/base_events.py' in line
    )

  def flush(self) -> None:
    text = self._pending.pop(threading.main_thread().ident, '')
    if text:
      self._stream.write(text)
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def app_run(main) -> None:
  """``absl.app.run(main)`` with :func:`parse_flags` and quiet logs."""
  quiet_logs()
  sys.stderr = _DropClosedLoopTracebacks(sys.stderr)

  def guarded(argv):
    try:
      call(main, argv)
    except SystemExit as e:
      if e.code not in (0, None):
        # Every save the exit depends on has finished (a signal's exit waits
        # for its checkpoint); a failed run's background threads may still
        # hold the interpreter open, so leave without waiting for them.
        _silence_stderr()
        os._exit(e.code if isinstance(e.code, int) else 1)
      raise

  app.run(guarded, flags_parser=parse_flags)


def _silence_stderr() -> None:
  """After the one error line: a failed run's background threads (Orbax's
  async saves, TensorStore) may print tracebacks while the interpreter shuts
  down. The line that matters is out; the rest goes to /dev/null."""
  sys.stdout.flush()
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  sys.stderr = open(os.devnull, 'w')  # noqa: SIM115 (kept to the end)


def unknown_override(config, argv) -> str | None:
  """The error line for the first ``--config.<key>`` not in ``config``."""
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.') :].split('=', 1)[0]
    node, keys = config, path.split('.')
    for i, key in enumerate(keys):
      if not hasattr(node, 'keys') or key not in node:
        known = list(node.keys()) if hasattr(node, 'keys') else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        return (
          f"error: unknown config key '{'.'.join(keys[: i + 1])}'"
          f'{hint} (known keys: {", ".join(sorted(known))})'
        )
      node = node[key]
  return None


def train(config, workdir: str, eval_only: bool = False) -> dict:
  """The default action: validate, find the data, train (or score)."""
  from jaxcls import config as config_lib
  from jaxcls import data

  # Fail fast, before the heavy imports: a bad value or a dataset that
  # cannot be had is reported within seconds.
  config_lib.validate(config)
  data.builder_for(config)
  from jaxcls.training import run as train_lib

  try:
    return train_lib.train_and_evaluate(config, workdir, eval_only=eval_only)
  except RuntimeError as e:
    from jaxcls.training import parallel

    lost = parallel.lost_peer(e, workdir)
    if lost:
      raise RuntimeError(lost) from None
    raise
  except OSError as e:
    if e.filename:  # Its message names the file already.
      raise
    raise OSError(
      f'{e.strerror or e} while writing to {workdir}; free disk space or '
      'fix the folder, then run the same command to resume from the last '
      'saved checkpoint'
    ) from None


def run(get_config, name: str, main=None, measured: str = '') -> None:
  """Defines the flags for ``get_config()`` and runs ``main``.

  Args:
    get_config: the experiment's config function.
    name: the experiment's name; the default workdir is ``runs/<name>``.
    main: ``main(config, workdir)``; defaults to training (``--eval_only``
      then scores the best checkpoint instead).
    measured: text that ends ``--help``: what the experiment measured
      (``experiments.results.measured``, the README's source).
  """
  _add_to_help(measured)
  config = get_config()
  error = unknown_override(config, sys.argv)
  if error:
    print(error, file=sys.stderr)
    sys.exit(2)
  config_flags.DEFINE_config_dict('config', config)
  flags.DEFINE_string(
    'workdir',
    os.path.join('runs', name),
    'Checkpoints, results.json and logs go here.',
  )
  if main is None:
    flags.DEFINE_bool(
      'eval_only', False, 'Restore the best checkpoint and score it on test.'
    )

  def absl_main(argv):
    if len(argv) > 1:
      fail(
        f'unexpected arguments {argv[1:]}; use --config.x=... and --workdir=...'
      )
    if main is None:
      train(
        flags.FLAGS.config, flags.FLAGS.workdir, eval_only=flags.FLAGS.eval_only
      )
    else:
      main(flags.FLAGS.config, flags.FLAGS.workdir)

  app_run(absl_main)


def _add_to_help(text: str) -> None:
  """Appends ``text`` to the docstring that absl prints for ``--help``."""
  main = sys.modules.get('__main__')
  doc = getattr(main, '__doc__', None)
  if text and doc and text not in doc:
    main.__doc__ = f'{doc.rstrip()}\n\n{text}\n'


_quiet_logs = quiet_logs  # The old private name, for callers not yet moved.
