"""The command line shared by every experiment: flags in, one clear line out.

An experiment module calls ``run(get_config, 'name')``. Flags:
``--config.<field>=value`` overrides any config field, ``--workdir`` (default
``runs/<name>``) holds checkpoints and results, ``--eval_only`` scores the
best checkpoint on the test split. Expected failures (bad config, missing
dataset, unusable checkpoint, non-finite loss) print one line to stderr and
exit with status 2; they never print a traceback.
"""

import difflib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

EXPECTED_ERRORS = (ValueError, RuntimeError, OSError)


def _quiet_logs():
  # TF and absl are chatty on import; keep the console for the training log.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # TF only decodes data here; its oneDNN kernels are not worth a log line.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  logging.set_verbosity(logging.ERROR)


def unknown_override(config, argv) -> str | None:
  """The error line for the first ``--config.<key>`` not in ``config``."""
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node, keys = config, path.split('.')
    for i, key in enumerate(keys):
      if not hasattr(node, 'keys') or key not in node:
        known = list(node.keys()) if hasattr(node, 'keys') else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        return (f"error: unknown config key '{'.'.join(keys[:i + 1])}'"
                f'{hint} (known keys: {", ".join(sorted(known))})')
      node = node[key]
  return None


def run(get_config, name: str) -> None:
  """Defines the flags for ``get_config()`` and runs training or eval."""
  config = get_config()
  error = unknown_override(config, sys.argv)
  if error:
    print(error, file=sys.stderr)
    sys.exit(2)
  config_flags.DEFINE_config_dict('config', config)
  flags.DEFINE_string('workdir', os.path.join('runs', name),
                      'Checkpoints, results.json and logs go here.')
  flags.DEFINE_bool('eval_only', False,
                    'Restore the best checkpoint and score it on test.')

  def main(argv):
    if len(argv) > 1:
      sys.exit(f'error: unexpected arguments {argv[1:]}; use --config.x=... '
               'and --workdir=...')
    _quiet_logs()
    from jaxcls import config as config_lib, data
    try:
      # Fail fast, before the heavy imports: a bad value or a dataset that
      # cannot be had is reported within seconds.
      config_lib.validate(flags.FLAGS.config)
      data.builder_for(flags.FLAGS.config)
      from jaxcls import train
      train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                               eval_only=flags.FLAGS.eval_only)
    except EXPECTED_ERRORS as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(main)
