"""The command line shared by every experiment: flags in, one clear line out.

An experiment module calls ``run(get_config, 'name')``. Flags:
``--config.<field>=value`` overrides any config field, ``--workdir`` (default
``runs/<name>``) holds checkpoints and results, ``--eval_only`` scores the
best checkpoint on the test split. Expected failures (bad config, missing
dataset, unusable checkpoint, non-finite loss) print one line to stderr and
exit with status 2; they never print a traceback.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

EXPECTED_ERRORS = (ValueError, RuntimeError, OSError)


def _quiet_logs():
  # TF and absl are chatty on import; keep the console for the training log.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  logging.set_verbosity(logging.ERROR)


def run(get_config, name: str) -> None:
  """Defines the flags for ``get_config()`` and runs training or eval."""
  config_flags.DEFINE_config_dict('config', get_config())
  flags.DEFINE_string('workdir', os.path.join('runs', name),
                      'Checkpoints, results.json and logs go here.')
  flags.DEFINE_bool('eval_only', False,
                    'Restore the best checkpoint and score it on test.')

  def main(argv):
    if len(argv) > 1:
      sys.exit(f'error: unexpected arguments {argv[1:]}; use --config.x=... '
               'and --workdir=...')
    _quiet_logs()
    from jaxcls import train  # Heavy imports after flag parsing.
    try:
      train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                               eval_only=flags.FLAGS.eval_only)
    except EXPECTED_ERRORS as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(main)
