"""The console commands that ``pip install jaxcls`` puts on the PATH.

Each one runs an ``experiments`` module exactly as ``python -m
experiments.<name>`` does (``runpy``, as ``__main__``), so the flags, the
``--help`` text and the one-line ``error: ...`` exits are the module's own:

* ``jaxcls-train --experiment fashion_mnist --config.x=...``: any training
  experiment (``mnist``, ``fashion_mnist``, ``cifar10``,
  ``sequential_mnist``, ``sweep``, ...);
* ``jaxcls-report --workdir=W``: ``experiments.report``;
* ``jaxcls-predict --workdir=W image.png``: ``experiments.predict``;
* ``jaxcls-export --workdir=W``: ``experiments.export``.

absl exits with status 1 after printing ``--help``; here asking for help
exits 0, like every other command line tool.
"""

import difflib
import pkgutil
import runpy
import sys
from typing import NoReturn

# experiments modules that are tools with their own command, not trainings.
TOOLS = ('report', 'predict', 'export')
# experiments modules that are neither: the measured results (data).
NOT_EXPERIMENTS = ('results',)
HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')

TRAIN_USAGE = """\
usage: jaxcls-train --experiment NAME [--config.<field>=value ...]
                    [--workdir=W] [--eval_only]

Trains (or, with --eval_only, scores) one experiment, exactly as
`python -m experiments.NAME` does. Experiments: {names}.
`jaxcls-train --experiment NAME --help` describes one of them."""


def _fail(message: str) -> NoReturn:
  # The same one line and status as jaxcls.commands.cli for a bad command line.
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def experiment_names() -> list[str]:
  """The training experiments: ``experiments`` modules other than tools."""
  import experiments

  return sorted(
    m.name
    for m in pkgutil.iter_modules(experiments.__path__)
    if not m.ispkg
    and not m.name.startswith('_')
    and m.name not in TOOLS + NOT_EXPERIMENTS
  )


def split_experiment(argv: list[str]) -> tuple[str | None, list[str]]:
  """``(name, argv without --experiment)``; name is None if it is absent.

  Accepts ``--experiment NAME`` and ``--experiment=NAME``; an argument after
  a bare ``--`` is left alone.
  """
  rest = [argv[0]]
  name = None
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg == '--':
      rest.extend(argv[i:])
      break
    if arg == '--experiment':
      if i + 1 == len(argv):
        _fail('--experiment needs a name, e.g. --experiment fashion_mnist')
      name = argv[i + 1]
      i += 2
      continue
    if arg.startswith('--experiment='):
      name = arg.split('=', 1)[1]
    else:
      rest.append(arg)
    i += 1
  return name, rest


def run_module(module: str, argv: list[str]) -> None:
  """Runs ``module`` as ``python -m module`` would, with ``argv``."""
  wants_help = any(a in HELP_FLAGS for a in argv[1:])
  sys.argv = list(argv)
  try:
    runpy.run_module(module, run_name='__main__', alter_sys=True)
  except SystemExit as e:
    if wants_help and e.code == 1:  # absl's status after printing help
      sys.exit(0)
    raise


def train(argv: list[str] | None = None) -> None:
  """``jaxcls-train --experiment NAME [the flags of that experiment]``."""
  argv = list(sys.argv if argv is None else argv)
  name, rest = split_experiment(argv)
  names = experiment_names()
  if name is None:
    if any(a in HELP_FLAGS for a in rest[1:]):
      print(TRAIN_USAGE.format(names=', '.join(names)))
      sys.exit(0)
    _fail(
      f'--experiment is required, e.g. jaxcls-train --experiment '
      f'fashion_mnist (experiments: {", ".join(names)})'
    )
  if name not in names:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ''
    _fail(
      f"unknown experiment '{name}'{hint} (experiments: {', '.join(names)})"
    )
  run_module(f'experiments.{name}', rest)


def report(argv: list[str] | None = None) -> None:
  """``jaxcls-report``: ``python -m experiments.report``."""
  run_module('experiments.report', list(sys.argv if argv is None else argv))


def predict(argv: list[str] | None = None) -> None:
  """``jaxcls-predict``: ``python -m experiments.predict``."""
  run_module('experiments.predict', list(sys.argv if argv is None else argv))


def export(argv: list[str] | None = None) -> None:
  """``jaxcls-export``: ``python -m experiments.export``."""
  run_module('experiments.export', list(sys.argv if argv is None else argv))
