"""The report's figures: the PNGs the ``report`` command draws.

Training curves, the confusion matrix, the misclassified test images (or a
sequence run's misclassified texts or series, as a text file) and the
reliability diagram of :mod:`jaxcls.commands.report`, and a sweep's
``sweep.png`` (``experiments.sweep``). Each function draws one figure from
plain data (records, arrays, ``scores.summary``'s dict) and saves it; they
read no workdir. matplotlib is imported on first use, so importing this
module stays cheap.
"""

# The characters of each misclassified text that misclassified.txt shows.
PREVIEW_CHARS = 200


def _recent_steps(records: list[dict]) -> list[dict]:
  """The running train-loss records, less the few short (noisy) windows cut
  by an epoch start."""
  steps = [r for r in records if 'train_loss_recent' in r]
  if steps:
    full = max(r.get('window_steps', 1) for r in steps)
    steps = [r for r in steps if r.get('window_steps', full) * 2 >= full]
  return steps


def _plot_epochs(ax, x: list, epochs: list[dict], metric: str) -> None:
  """The epoch means of ``train_<metric>`` and ``val_<metric>`` on ``ax``."""
  ax.plot(
    x,
    [r[f'train_{metric}'] for r in epochs],
    'o-',
    color='tab:blue',
    label='train (epoch mean)',
  )
  ax.plot(
    x,
    [r[f'val_{metric}'] for r in epochs],
    's-',
    color='tab:orange',
    label='validation',
  )


def plot_curves(records: list[dict], path: str) -> None:
  """Loss and accuracy per epoch, train and validation, side by side.

  Args:
    records: ``metrics.jsonl``'s records (epoch and running-step ones).
    path: the PNG to write.

  Raises:
    ValueError: no epoch has completed yet.
  """
  import matplotlib.pyplot as plt

  from jaxcls.training import metrics

  epochs = metrics.epoch_records(records)
  if not epochs:
    raise ValueError(
      'metrics.jsonl has no completed epoch yet; train for at least one epoch'
    )
  steps = _recent_steps(records)
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
  _plot_epochs(ax_loss, x, epochs, 'loss')
  _plot_epochs(ax_acc, x, epochs, 'accuracy')
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


def write_misclassified_text(
  labels, probs, names: list[str], count: int, path: str, texts=None
) -> dict[int, str]:
  """The first ``count`` misclassified test examples of a sequence run, as
  UTF-8 text: per example its test index, true and predicted labels, and
  for ``texts`` (the test texts, in order) their first ``PREVIEW_CHARS``
  characters on one line. Returns the titles, as :func:`plot_misclassified`.
  """
  import numpy as np

  titles = misclassified_titles(labels, probs, names, count)
  total = int(np.sum(probs.argmax(-1) != labels))
  what = 'texts' if texts is not None else 'series'
  lines = [
    f'{len(titles)} of {total} misclassified test {what} (first by index)',
    '',
  ]
  for i, title in titles.items():
    lines.append(title.replace('\n', '  '))
    if texts is not None:
      flat = ' '.join(texts[i].split())
      cut = len(flat) > PREVIEW_CHARS
      lines.append(f'  {flat[:PREVIEW_CHARS]}{"..." if cut else ""}')
  with open(path, 'w', encoding='utf-8', errors='replace') as f:
    f.write('\n'.join(lines) + '\n')
  return titles


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


def _label(value) -> str:
  """A swept value as a tick or legend label (floats in ``%g``)."""
  return f'{value:g}' if isinstance(value, float) else str(value)


def _mean_accuracy(records: list, **fixed):
  """The mean best validation accuracy of the members with ``fixed`` values
  (NaN when there are none)."""
  import numpy as np

  accs = [
    r['best_val_accuracy']
    for r in records
    if all(r['values'][k] == v for k, v in fixed.items())
  ]
  return np.mean(accs) if accs else np.nan


def _sweep_heat_map(fig, ax, records: list, swept: dict, fy: str, fx: str):
  """Mean best validation accuracy over two swept fields, one cell each."""
  import numpy as np

  grid = np.array(
    [
      [_mean_accuracy(records, **{fy: y, fx: x}) for x in swept[fx]]
      for y in swept[fy]
    ]
  )
  image = ax.imshow(grid, cmap='viridis', aspect='auto', origin='lower')
  for (i, j), v in np.ndenumerate(grid):
    if v == v:  # Not NaN: some member has these values.
      ax.text(
        j,
        i,
        f'{v:.3f}',
        ha='center',
        va='center',
        color='white' if v < np.nanmean(grid) else 'black',
      )
  ax.set_xticks(range(len(swept[fx])), [_label(x) for x in swept[fx]])
  ax.set_yticks(range(len(swept[fy])), [_label(y) for y in swept[fy]])
  ax.set_xlabel(fx)
  ax.set_ylabel(fy)
  fig.colorbar(image, ax=ax, label='best validation accuracy')


def _sweep_curve(ax, records: list, swept: dict, fx: str) -> None:
  """Mean best validation accuracy against one swept field's values."""
  ax.plot(
    range(len(swept[fx])),
    [_mean_accuracy(records, **{fx: x}) for x in swept[fx]],
    'o-',
  )
  ax.set_xticks(range(len(swept[fx])), [_label(x) for x in swept[fx]])
  ax.set_xlabel(fx)
  ax.set_ylabel('best validation accuracy')
  ax.grid(alpha=0.3)


def _sweep_members(ax, records: list, best_by: str) -> None:
  """Every member's validation accuracy per epoch, the best 5 by
  ``best_by`` labelled (the sweep's own order: thick is the selected)."""
  import numpy as np
  from matplotlib import ticker

  from jaxcls.sweep import records as sweep_records

  order = sweep_records.member_order(
    [r['best_val_accuracy'] for r in records],
    [r.get('best_val_loss') for r in records],
    best_by,
  )
  ranked = [records[i] for i in order]
  for rank, r in enumerate(ranked):
    curve = [np.nan if v is None else v for v in r['val_accuracy']]
    name = ', '.join(f'{k}={_label(v)}' for k, v in sorted(r['values'].items()))
    ax.plot(
      range(1, len(curve) + 1),
      curve,
      marker='.',
      lw=2.5 if rank == 0 else 1,
      alpha=1 if rank < 5 else 0.35,
      label=name if rank < 5 else None,
    )
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel('epoch')
  ax.set_ylabel('validation accuracy')
  ax.set_title(f'Per member, best 5 by {best_by} labelled (thick: selected)')
  ax.legend(fontsize=7, loc='lower right')
  ax.grid(alpha=0.3)


def plot_sweep(
  records: list, swept: dict, path: str, best_by: str = 'accuracy'
) -> None:
  """A sweep's ``sweep.png`` (``jaxcls.sweep.run_sweep`` records).

  Left: best validation accuracy against the swept values (a heat map of the
  two fields with most values, averaged over the others; or a curve for one
  field). Right: every member's validation accuracy per epoch, ranked by
  ``best_by`` as the sweep selects.

  Args:
    records: one per member: its ``values``, ``best_val_accuracy`` and
      ``val_accuracy`` per epoch (None where it has none).
    swept: ``{field: [values]}``, the sweep's grid.
    path: the PNG to write.
    best_by: the sweep's ``config.best_by``: 'accuracy' or 'loss'.
  """
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  axes_fields = sorted(swept, key=lambda f: -len(swept[f]))[:2]
  others = [f for f in swept if f not in axes_fields]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
  suffix = f' (mean over {", ".join(others)})' if others else ''
  if len(axes_fields) == 2:
    _sweep_heat_map(fig, left, records, swept, *axes_fields)
  else:
    (fx,) = axes_fields
    _sweep_curve(left, records, swept, fx)
  left.set_title('Validation accuracy vs swept values' + suffix)
  _sweep_members(right, records, best_by)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
