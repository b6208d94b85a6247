"""The ``report`` command: figures, scores and the model summary of a workdir.

:func:`report` scores a training workdir's best checkpoint on the test split
and writes ``<workdir>/report/`` (the PNGs of
:mod:`jaxcls.commands.report_figures` and ``report.json``); it prints the
model summary and the scores. :data:`USAGE` is the ``--help`` text;
``python -m experiments.report`` and ``jaxcls-report`` run :func:`run`.
"""

import os
import sys

from absl import flags

from jaxcls.commands import cli
from jaxcls.commands.report_figures import (
  plot_confusion,
  plot_curves,
  plot_misclassified,
  plot_reliability,
)

FLAGS = flags.FLAGS

# What --help prints: absl shows the __main__ module's docstring, and
# experiments.report takes this as its own.
USAGE = """\
Plots and a model summary for a finished (or running) training workdir.

Run:  python -m experiments.report --workdir=runs/fashion_mnist

Writes into ``<workdir>/report/``:

* ``curves.png``: train and validation loss and accuracy per epoch (from
  ``metrics.jsonl``), with the running train loss logged every
  ``log_every_steps`` steps as a thin line;
* ``confusion_matrix.png``: the best checkpoint on the test split;
* ``misclassified.png``: test images the best checkpoint gets wrong, with
  their true and predicted labels;
* ``reliability.png``: the reliability diagram, test accuracy per top-1
  confidence bin (15 equal-width bins) against the diagonal;
* ``report.json``: per-class precision, recall, F1 and support, their macro
  and weighted averages, the top 5 confusions, the expected calibration
  error (ECE) and the reliability bins (``jaxcls.training.scores.summary``).

It prints the model summary (layers, shapes, parameter counts, FLOPs per
layer), XLA's FLOPs per example, the per-class table with its averages, the
top 5 confusions (true -> predicted: count) and the ECE. Errors print one
line and exit 2.
"""


def define_flags() -> None:
  """Defines ``--workdir`` and ``--num_misclassified`` (by :func:`run`)."""
  # Defined only when run as a program, so that tests can import this module
  # next to other tools that define a --workdir flag too. Disclaimed: absl
  # then files the flags under the first caller outside this module, the
  # __main__ module (experiments.report), whose flags --help lists.
  flags.disclaim_key_flags()
  flags.DEFINE_string('workdir', None, 'The training workdir to report on.')
  flags.DEFINE_integer(
    'num_misclassified',
    25,
    'How many misclassified test images to show (0 or more).',
    lower_bound=0,
  )


def write_scores(
  matrix, names: list[str], probs, labels, title: str, out: str
) -> tuple[dict, dict]:
  """Prints the per-class table, the top 5 confusions and the ECE; writes
  ``reliability.png`` and ``report.json`` into ``out``.

  Returns:
    ``scores.summary``'s dict and ``{'reliability', 'report_json'}`` paths.
  """
  import json

  from jaxcls.training import scores

  summary = scores.summary(matrix, names, probs, labels, k=5)
  print(scores.format_table(summary))
  print('Top confusions (true -> predicted: count):')
  for line in summary['top_confusions']:
    print(f'  {line}')
  print(
    f'Expected calibration error (top-1, {scores.NUM_BINS} bins): '
    f'{summary["ece"]:.4f}'
  )
  paths = {
    'reliability': os.path.join(out, 'reliability.png'),
    'report_json': os.path.join(out, 'report.json'),
  }
  plot_reliability(summary, title, paths['reliability'])
  with open(paths['report_json'], 'w') as f:
    json.dump(summary, f, indent=2, allow_nan=False)
    f.write('\n')
  return summary, paths


def print_model(config, state, spec) -> tuple[int, float]:
  """Prints the layer table, parameters and FLOPs; returns the two counts."""
  from jaxcls import models
  from jaxcls.training import inspection

  model = models.create_model(config, spec.num_classes)
  print(inspection.model_summary(model, spec.image_shape))
  n_params = inspection.parameter_count(state.params)
  flops = inspection.flops_per_example(state, spec.image_shape)
  print(
    f'Parameters: {n_params:,}   FLOPs per example (XLA, forward): {flops:,.0f}'
  )
  return n_params, flops


def plot_test(config, state, spec, names, out, num_misclassified) -> dict:
  """Scores the best checkpoint on the test split: the confusion matrix and
  misclassified PNGs, then ``write_scores``'s table, PNG and JSON.

  Returns:
    ``paths`` (the files written), ``confusion_matrix``, ``test_accuracy``,
    ``misclassified`` (the titles shown) and ``scores`` (``report.json``).
  """
  import numpy as np

  from jaxcls import data
  from jaxcls.training import inspection

  test = data.read_split(data.builder_for(config), 'test')
  # Scored as the run scored it (flip TTA when the run used it), so this
  # matches the test accuracy in results.json.
  probs = inspection.predict_all(
    state, test.images, config.eval_batch_size, flip_tta=config.flip_tta
  )
  matrix = inspection.confusion_matrix(
    test.labels, probs.argmax(-1), spec.num_classes
  )
  accuracy = float(np.trace(matrix) / matrix.sum())
  title = f'{config.model} on {config.dataset} test (best checkpoint)'
  paths = {
    'confusion_matrix': os.path.join(out, 'confusion_matrix.png'),
    'misclassified': os.path.join(out, 'misclassified.png'),
  }
  plot_confusion(
    matrix,
    names,
    f'{title}: accuracy {accuracy:.4f}',
    paths['confusion_matrix'],
  )
  shown = plot_misclassified(
    test.images,
    test.labels,
    probs,
    names,
    num_misclassified,
    paths['misclassified'],
  )
  print(
    f'Test accuracy (best checkpoint): {accuracy:.4f} on '
    f'{int(matrix.sum())} images; {len(shown)} misclassified shown'
  )
  summary, more = write_scores(matrix, names, probs, test.labels, title, out)
  return {
    'paths': {**paths, **more},
    'confusion_matrix': matrix,
    'test_accuracy': accuracy,
    'misclassified': shown,
    'scores': summary,
  }


def report(workdir: str, num_misclassified: int = 25) -> dict:
  """Writes ``<workdir>/report/``; prints the model summary and the scores.

  Args:
    workdir: a training workdir with a best checkpoint.
    num_misclassified: how many misclassified test images to show.

  Returns:
    ``paths`` (name -> file written), ``confusion_matrix``, ``test_accuracy``,
    ``misclassified``, ``scores``, ``ece``, ``parameters``,
    ``flops_per_example`` and ``class_names``.

  Raises:
    ValueError: a negative ``num_misclassified`` (before reading anything).
    CheckpointError: the workdir holds no usable best checkpoint.
  """
  if num_misclassified < 0:
    raise ValueError(
      f'--num_misclassified must be 0 or more, got {num_misclassified}'
    )
  import matplotlib

  matplotlib.use('Agg')  # Files only, no display needed.

  from jaxcls import data
  from jaxcls.training import inspection, metrics

  config, state = inspection.load_best(workdir)
  spec = data.dataset_spec(config)
  out = os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  names = inspection.class_names(config)
  n_params, flops = print_model(config, state, spec)

  paths = {}
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    paths['curves'] = os.path.join(out, 'curves.png')
    plot_curves(metrics.read_jsonl(metrics_path), paths['curves'])
  else:
    print(f'note: no {metrics_path}; skipping the curves', file=sys.stderr)
  found = plot_test(config, state, spec, names, out, num_misclassified)
  paths.update(found.pop('paths'))
  for path in paths.values():
    print(f'wrote {path}')
  return {
    'paths': paths,
    **found,
    'ece': found['scores']['ece'],
    'parameters': n_params,
    'flops_per_example': flops,
    'class_names': names,
  }


def main(argv):
  """The absl main: checks the command line, then runs :func:`report`."""
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; use --workdir=W')
  if not FLAGS.workdir:
    cli.fail('--workdir is required (the folder training wrote to)')
  report(FLAGS.workdir, FLAGS.num_misclassified)


def run() -> None:
  """The command: defines the flags and runs :func:`main` on ``sys.argv``."""
  define_flags()
  cli.app_run(main)
