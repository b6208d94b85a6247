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
  write_misclassified_text,
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
  their true and predicted labels; for a sequence run (texts, time series)
  ``misclassified.txt`` instead: each one's test index and labels, and a
  text's first 200 characters;
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
    'How many misclassified test examples to show (0 or more).',
    lower_bound=0,
  )


# The models whose layers loop over steps (lax.scan).
RECURRENT = ('rnn', 'lstm', 'gru', 'sequence')


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
  print(inspection.model_summary(model, spec.image_shape, spec.input_dtype))
  n_params = inspection.parameter_count(state.params)
  flops = inspection.flops_per_example(
    state, spec.image_shape, input_dtype=spec.input_dtype
  )
  # XLA's cost analysis counts a loop's body once, not once per step.
  loop = ' (recurrent loops counted once)' if config.model in RECURRENT else ''
  print(
    f'Parameters: {n_params:,}   FLOPs per example (XLA, forward): '
    f'{flops:,.0f}{loop}'
  )
  return n_params, flops


def _misclassified(config, test, probs, names, count, out) -> tuple:
  """``(path, titles)``: the first ``count`` misclassified test examples, a
  PNG grid of images, or a sequence run's ``misclassified.txt`` (for texts
  with their start, read again from the prepared dataset, in test order)."""
  from jaxcls import data

  if test.lengths is None:
    path = os.path.join(out, 'misclassified.png')
    return path, plot_misclassified(
      test.images, test.labels, probs, names, count, path
    )
  texts = None
  if config.dataset in data.specs.TEXT_DATASETS:
    from jaxcls.data import text_files

    texts, labels = text_files.read_texts(data.builder_for(config), 'test')
    if len(texts) != len(test) or (labels != test.labels).any():
      raise ValueError(
        f'the test texts of {config.dataset} changed; train again'
      )
  path = os.path.join(out, 'misclassified.txt')
  return path, write_misclassified_text(
    test.labels, probs, names, count, path, texts
  )


def plot_test(
  config, state, spec, names, out, num_misclassified, test=None
) -> dict:
  """Scores the best checkpoint on the test split (``test``, else read):
  the confusion matrix and misclassified examples, then ``write_scores``'s
  table, PNG and JSON.

  Returns:
    ``paths`` (the files written), ``confusion_matrix``, ``test_accuracy``,
    ``misclassified`` (the titles shown) and ``scores`` (``report.json``).
  """
  import numpy as np

  from jaxcls import data
  from jaxcls.training import inspection

  if test is None:
    test = data.read_split(data.builder_for(config), 'test')
  # Scored as the run scored it (flip TTA when the run used it), so this
  # matches the test accuracy in results.json.
  probs = inspection.predict_all(
    state,
    test.images,
    config.eval_batch_size,
    flip_tta=config.flip_tta,
    lengths=test.lengths,
  )
  matrix = inspection.confusion_matrix(
    test.labels, probs.argmax(-1), spec.num_classes
  )
  accuracy = float(np.trace(matrix) / matrix.sum())
  title = f'{config.model} on {config.dataset} test (best checkpoint)'
  paths = {'confusion_matrix': os.path.join(out, 'confusion_matrix.png')}
  plot_confusion(
    matrix,
    names,
    f'{title}: accuracy {accuracy:.4f}',
    paths['confusion_matrix'],
  )
  paths['misclassified'], shown = _misclassified(
    config, test, probs, names, num_misclassified, out
  )
  what = 'images' if test.lengths is None else 'sequences'
  if config.dataset in data.specs.TEXT_DATASETS:
    what = 'texts'
  print(
    f'Test accuracy (best checkpoint): {accuracy:.4f} on '
    f'{int(matrix.sum())} {what}; {len(shown)} misclassified shown'
  )
  summary, more = write_scores(matrix, names, probs, test.labels, title, out)
  return {
    'paths': {**paths, **more},
    'confusion_matrix': matrix,
    'test_accuracy': accuracy,
    'misclassified': shown,
    'scores': summary,
  }


def _run_data(config, workdir: str) -> tuple:
  """``(spec, test split or None)``: a sequence run's data loaded once
  (and checked to encode as its ``inputs.json`` says); images' test split
  is read later, by :func:`plot_test`."""
  import json

  from jaxcls import data
  from jaxcls.training import workdir as workdir_lib

  if not data.is_sequence(config.dataset):
    return data.dataset_spec(config), None
  ds = data.load_config(config)
  saved = workdir_lib.read_inputs(workdir)
  if saved is not None and json.loads(json.dumps(ds.inputs)) != saved:
    raise ValueError(
      f'{config.dataset} now encodes differently from '
      f'{workdir_lib.inputs_path(workdir)} (another vocabulary, length or '
      'normalisation); report on the data the run trained on'
    )
  return ds.spec, ds.test


def report(workdir: str, num_misclassified: int = 25) -> dict:
  """Writes ``<workdir>/report/``; prints the model summary and the scores.

  Args:
    workdir: a training workdir with a best checkpoint.
    num_misclassified: how many misclassified test examples to show.

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

  from jaxcls.training import inspection, metrics

  config, state = inspection.load_best(workdir)
  spec, test = _run_data(config, workdir)
  out = os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  names = list(spec.class_names or (str(i) for i in range(spec.num_classes)))
  n_params, flops = print_model(config, state, spec)

  paths = {}
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    paths['curves'] = os.path.join(out, 'curves.png')
    plot_curves(metrics.read_jsonl(metrics_path), paths['curves'])
  else:
    print(f'note: no {metrics_path}; skipping the curves', file=sys.stderr)
  found = plot_test(config, state, spec, names, out, num_misclassified, test)
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
