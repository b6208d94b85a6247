"""Plots and a model summary for a finished (or running) training workdir.

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

import os
import sys

from absl import flags

from jaxcls.commands import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined only when run as a program, so that tests can import this module
  # next to other tools that define a --workdir flag too.
  flags.DEFINE_string('workdir', None, 'The training workdir to report on.')
  flags.DEFINE_integer(
    'num_misclassified',
    25,
    'How many misclassified test images to show (0 or more).',
    lower_bound=0,
  )


def plot_curves(records: list[dict], path: str) -> None:
  """Loss and accuracy per epoch, train and validation, side by side."""
  import matplotlib.pyplot as plt

  from jaxcls.training import metrics

  epochs = metrics.epoch_records(records)
  if not epochs:
    raise ValueError(
      'metrics.jsonl has no completed epoch yet; train for at least one epoch'
    )
  steps = [r for r in records if 'train_loss_recent' in r]
  if steps:  # Drop the few short (noisy) windows cut by an epoch start.
    full = max(r.get('window_steps', 1) for r in steps)
    steps = [r for r in steps if r.get('window_steps', full) * 2 >= full]
  x = [r['epoch'] for r in epochs]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  if steps:
    ax_loss.plot(
      [r['epoch_progress'] for r in steps],
      [r['train_loss_recent'] for r in steps],
      color='tab:blue',
      alpha=0.3,
      lw=1,
      label='train (recent steps)',
    )
  ax_loss.plot(
    x,
    [r['train_loss'] for r in epochs],
    'o-',
    color='tab:blue',
    label='train (epoch mean)',
  )
  ax_loss.plot(
    x,
    [r['val_loss'] for r in epochs],
    's-',
    color='tab:orange',
    label='validation',
  )
  ax_acc.plot(
    x,
    [r['train_accuracy'] for r in epochs],
    'o-',
    color='tab:blue',
    label='train (epoch mean)',
  )
  ax_acc.plot(
    x,
    [r['val_accuracy'] for r in epochs],
    's-',
    color='tab:orange',
    label='validation',
  )
  for ax, name in ((ax_loss, 'cross-entropy loss'), (ax_acc, 'accuracy')):
    ax.set_xlabel('epoch')
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_confusion(matrix, names: list[str], title: str, path: str) -> None:
  """The confusion matrix as a heat map, with the count in every cell."""
  import matplotlib.pyplot as plt

  n = len(names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.75 * n))
  im = ax.imshow(matrix, cmap='Blues')
  ax.set_xticks(range(n), names, rotation=45, ha='right')
  ax.set_yticks(range(n), names)
  ax.set_xlabel('predicted label')
  ax.set_ylabel('true label')
  ax.set_title(title)
  threshold = matrix.max() / 2
  for i in range(n):
    for j in range(n):
      ax.text(
        j,
        i,
        str(matrix[i, j]),
        ha='center',
        va='center',
        fontsize=8,
        color='white' if matrix[i, j] > threshold else 'black',
      )
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def misclassified_titles(
  labels, probs, names: list[str], count: int
) -> dict[int, str]:
  """``{test index: 'true ... pred ...'}`` for the first ``count`` errors."""
  import numpy as np

  predicted = probs.argmax(-1)
  wrong = np.flatnonzero(predicted != labels)[:count]
  return {
    int(i): f'#{i} true: {names[labels[i]]}\n'
    f'pred: {names[predicted[i]]} ({probs[i, predicted[i]]:.0%})'
    for i in wrong
  }


def plot_misclassified(
  images, labels, probs, names: list[str], count: int, path: str
) -> dict[int, str]:
  """A grid of the first ``count`` misclassified images; returns the titles."""
  import matplotlib.pyplot as plt

  titles = misclassified_titles(labels, probs, names, count)
  cols = 5
  rows = max(1, -(-len(titles) // cols))
  fig, axes = plt.subplots(
    rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False
  )
  for ax in axes.flat:
    ax.axis('off')
  for ax, (i, title) in zip(axes.flat, titles.items()):
    image = images[i]
    if image.shape[-1] == 1:
      ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=255)
    else:
      ax.imshow(image)
    ax.set_title(title, fontsize=8)
  fig.suptitle(f'{len(titles)} misclassified test images (first by index)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return titles


def plot_sweep(records: list, swept: dict, path: str) -> None:
  """A sweep's ``sweep.png`` (``jaxcls.sweep.run_sweep`` records).

  Left: best validation accuracy against the swept values (a heat map of the
  two fields with most values, averaged over the others; or a curve for one
  field). Right: every member's validation accuracy per epoch.
  """
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np

  axes_fields = sorted(swept, key=lambda f: -len(swept[f]))[:2]
  others = [f for f in swept if f not in axes_fields]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
  label = lambda v: f'{v:g}' if isinstance(v, float) else str(v)

  def mean_acc(**fixed):
    accs = [
      r['best_val_accuracy']
      for r in records
      if all(r['values'][k] == v for k, v in fixed.items())
    ]
    return np.mean(accs) if accs else np.nan

  suffix = f' (mean over {", ".join(others)})' if others else ''
  if len(axes_fields) == 2:
    fy, fx = axes_fields
    grid = np.array(
      [[mean_acc(**{fy: y, fx: x}) for x in swept[fx]] for y in swept[fy]]
    )
    image = left.imshow(grid, cmap='viridis', aspect='auto', origin='lower')
    for (i, j), v in np.ndenumerate(grid):
      if v == v:
        left.text(
          j,
          i,
          f'{v:.3f}',
          ha='center',
          va='center',
          color='white' if v < np.nanmean(grid) else 'black',
        )
    left.set_xticks(range(len(swept[fx])), [label(x) for x in swept[fx]])
    left.set_yticks(range(len(swept[fy])), [label(y) for y in swept[fy]])
    left.set_xlabel(fx)
    left.set_ylabel(fy)
    fig.colorbar(image, ax=left, label='best validation accuracy')
  else:
    (fx,) = axes_fields
    left.plot(
      range(len(swept[fx])), [mean_acc(**{fx: x}) for x in swept[fx]], 'o-'
    )
    left.set_xticks(range(len(swept[fx])), [label(x) for x in swept[fx]])
    left.set_xlabel(fx)
    left.set_ylabel('best validation accuracy')
    left.grid(alpha=0.3)
  left.set_title('Validation accuracy vs swept values' + suffix)
  ranked = sorted(records, key=lambda r: -r['best_val_accuracy'])
  for rank, r in enumerate(ranked):
    curve = [np.nan if v is None else v for v in r['val_accuracy']]
    name = ', '.join(f'{k}={label(v)}' for k, v in sorted(r['values'].items()))
    right.plot(
      range(1, len(curve) + 1),
      curve,
      marker='.',
      lw=2.5 if rank == 0 else 1,
      alpha=1 if rank < 5 else 0.35,
      label=name if rank < 5 else None,
    )
  right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  right.set_xlabel('epoch')
  right.set_ylabel('validation accuracy')
  right.set_title('Per member, best 5 labelled (thick: selected)')
  right.legend(fontsize=7, loc='lower right')
  right.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_reliability(summary: dict, title: str, path: str) -> None:
  """A reliability diagram from ``scores.summary``'s bins: accuracy per
  top-1 confidence bin against the diagonal, and how many images each holds.
  """
  import matplotlib.pyplot as plt

  rows = summary['reliability']
  lower = [r['lower'] for r in rows]
  width = [r['upper'] - r['lower'] for r in rows]
  full = [r for r in rows if r['count']]
  fig, (ax, ax_n) = plt.subplots(
    2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=(3, 1)
  )
  ax.bar(
    [r['lower'] for r in full],
    [r['accuracy'] for r in full],
    [r['upper'] - r['lower'] for r in full],
    align='edge',
    color='tab:blue',
    edgecolor='black',
    label='accuracy',
  )
  ax.plot(
    [r['confidence'] for r in full],
    [r['accuracy'] for r in full],
    'o',
    color='tab:orange',
    label="at the bin's mean confidence",
  )
  ax.plot([0, 1], [0, 1], '--', color='gray', label='perfect calibration')
  ax.set_ylabel('accuracy')
  ax.set_title(f'{title}\nECE {summary["ece"]:.4f} ({len(rows)} bins)')
  ax.legend(loc='upper left')
  ax_n.bar(lower, [r['count'] for r in rows], width, align='edge')
  ax_n.set_xlabel('top-1 confidence')
  ax_n.set_ylabel('images')
  for a in (ax, ax_n):
    a.set_xlim(0, 1)
    a.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  """Writes the PNGs and report.json, prints the summary and the scores;
  returns what it found.

  Raises ValueError before reading the workdir if ``num_misclassified`` is
  negative.
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
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; use --workdir=W')
  if not FLAGS.workdir:
    cli.fail('--workdir is required (the folder training wrote to)')
  report(FLAGS.workdir, FLAGS.num_misclassified)


if __name__ == '__main__':
  define_flags()
  cli.app_run(main)
