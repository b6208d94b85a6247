"""Per-class scores and calibration of a classifier's test predictions.

Everything is plain numpy, computed from a confusion matrix ``m[true,
predicted]`` (as ``inspection.confusion_matrix`` makes it) and from the
predicted probabilities: per-class precision, recall, F1 and support with
macro and support-weighted averages (0/0 counts as 0, as scikit-learn's
``zero_division=0``), the largest confusions, and the expected calibration
error (ECE) of the top-1 confidence over equal-width bins with the table
behind a reliability diagram. ``summary`` gathers it all, JSON-ready.
"""

import numpy as np

NUM_BINS = 15  # Equal-width confidence bins, as Guo et al. (2017).


def _divide(num, den) -> np.ndarray:
  """``num / den`` elementwise as float64, 0 where ``den`` is 0."""
  num, den = np.broadcast_arrays(
    np.asarray(num, np.float64), np.asarray(den, np.float64)
  )
  out = np.zeros(num.shape)
  np.divide(num, den, out=out, where=den != 0)
  return out


def _check_matrix(matrix) -> np.ndarray:
  m = np.asarray(matrix)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f'a confusion matrix is square, got shape {m.shape}')
  return m.astype(np.int64)


def per_class(matrix) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support of every class of ``matrix``.

  Args:
    matrix: ``(K, K)`` counts, ``matrix[true, predicted]``.

  Returns:
    ``{'precision', 'recall', 'f1': (K,) float64, 'support': (K,) int64}``;
    a class never predicted has precision 0, one never present recall 0.
  """
  m = _check_matrix(matrix)
  tp = np.diag(m)
  support = m.sum(1)
  predicted = m.sum(0)
  # F1 as 2 TP / (2 TP + FP + FN): the harmonic mean, exact when 0/0.
  return {
    'precision': _divide(tp, predicted),
    'recall': _divide(tp, support),
    'f1': _divide(2 * tp, support + predicted),
    'support': support,
  }


def averages(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
  """Macro (unweighted) and support-weighted means of ``per_class`` scores.

  Args:
    scores: ``per_class``'s result; every class counts in the macro mean,
      present in the test split or not.

  Returns:
    ``{'macro': {...}, 'weighted': {...}}``, each with precision, recall,
    f1 and support (the total).
  """
  support = scores['support']
  total = int(support.sum())
  weights = {'macro': np.ones(len(support)), 'weighted': support}
  out = {}
  for name, w in weights.items():
    out[name] = {
      key: float(_divide(np.dot(w, scores[key]), w.sum()))
      for key in ('precision', 'recall', 'f1')
    }
    out[name]['support'] = total
  return out


def top_confusions(matrix, names: list[str], k: int = 5) -> list[str]:
  """The ``k`` largest off-diagonal cells as ``'true -> predicted: count'``.

  Args:
    matrix: ``(K, K)`` counts, ``matrix[true, predicted]``.
    names: the K class names.
    k: how many cells at most; empty cells are never listed.

  Returns:
    Strings, largest count first; equal counts in row-major order (by true
    class, then predicted class), so the list is deterministic.
  """
  m = _check_matrix(matrix)
  if len(names) != len(m):
    raise ValueError(f'{len(names)} names for {len(m)} classes')
  off = m.copy()
  np.fill_diagonal(off, 0)
  # A stable sort of the flattened cells keeps row-major order among ties.
  order = np.argsort(-off.ravel(), kind='stable')[:k]
  cells = [divmod(int(i), len(m)) for i in order if off.flat[i] > 0]
  return [f'{names[t]} -> {names[p]}: {m[t, p]}' for t, p in cells]


def reliability_bins(
  probs, labels, num_bins: int = NUM_BINS
) -> dict[str, np.ndarray]:
  """The top-1 confidence and accuracy of equal-width confidence bins.

  Bin ``b`` holds the examples whose highest probability lies in
  ``(edges[b], edges[b + 1]]`` (the first bin includes 0); the prediction
  is the argmax, as the confusion matrix's.

  Args:
    probs: ``(N, K)`` class probabilities.
    labels: ``(N,)`` true class indices.
    num_bins: how many bins split [0, 1].

  Returns:
    ``{'edges': (num_bins + 1,), 'confidence', 'accuracy': (num_bins,)
    means, NaN in an empty bin, 'count': (num_bins,) int64}``.
  """
  probs, labels = np.asarray(probs), np.asarray(labels)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(
      f'probs (N, K) and labels (N,) expected, got {probs.shape} and '
      f'{labels.shape}'
    )
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  confidence = probs.max(-1).astype(np.float64)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  index = np.searchsorted(edges, confidence, side='left') - 1
  index = np.clip(index, 0, num_bins - 1)
  count = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid='ignore'):  # Empty bins: NaN.
    mean_conf = np.bincount(index, confidence, num_bins) / count
    accuracy = np.bincount(index, correct, num_bins) / count
  return {
    'edges': edges,
    'confidence': mean_conf,
    'accuracy': accuracy,
    'count': count,
  }


def expected_calibration_error(bins: dict[str, np.ndarray]) -> float:
  """ECE: the sum over bins of ``|accuracy - confidence| * n_bin / n``.

  Args:
    bins: ``reliability_bins``'s result.

  Returns:
    A float in [0, 1]; 0 for no examples.
  """
  count = bins['count']
  full = count > 0
  gap = np.abs(bins['accuracy'][full] - bins['confidence'][full])
  return float(_divide(np.dot(gap, count[full]), count.sum()))


def summary(
  matrix, names: list[str], probs, labels, k: int = 5, num_bins: int = NUM_BINS
) -> dict:
  """Everything above as plain Python values, ready for ``json.dump``.

  Args:
    matrix: ``(K, K)`` counts, ``matrix[true, predicted]``.
    names: the K class names.
    probs: ``(N, K)`` probabilities the matrix was counted from.
    labels: ``(N,)`` true class indices.
    k, num_bins: how many top confusions, and how many calibration bins.

  Returns:
    ``{'per_class': [{'name', 'precision', 'recall', 'f1', 'support'}, ...]
    (in class order), 'macro_avg', 'weighted_avg', 'accuracy',
    'top_confusions', 'ece', 'reliability': [{'lower', 'upper', 'confidence',
    'accuracy', 'count'}, ...]}``; empty bins: None confidence and accuracy.
  """
  m = _check_matrix(matrix)
  scores = per_class(m)
  means = averages(scores)
  bins = reliability_bins(probs, labels, num_bins)
  rows = [
    {key: float(scores[key][i]) for key in ('precision', 'recall', 'f1')}
    for i in range(len(m))
  ]
  for name, row, support in zip(names, rows, scores['support']):
    row.update(name=name, support=int(support))
  return {
    'per_class': rows,
    'macro_avg': means['macro'],
    'weighted_avg': means['weighted'],
    'accuracy': float(_divide(np.trace(m), m.sum())),
    'top_confusions': top_confusions(m, names, k),
    'ece': expected_calibration_error(bins),
    'reliability': _bin_rows(bins),
  }


def _bin_rows(bins: dict[str, np.ndarray]) -> list[dict]:
  """``reliability_bins`` as one dict per bin, None for an empty bin's
  means (JSON has no NaN)."""
  mean = lambda v: None if np.isnan(v) else float(v)
  return [
    {
      'lower': float(bins['edges'][b]),
      'upper': float(bins['edges'][b + 1]),
      'confidence': mean(bins['confidence'][b]),
      'accuracy': mean(bins['accuracy'][b]),
      'count': int(bins['count'][b]),
    }
    for b in range(len(bins['count']))
  ]


def format_table(report: dict) -> str:
  """``summary``'s per-class scores and averages as a plain-text table."""
  width = max([12, *(len(r['name']) for r in report['per_class'])])
  head = f'{"":<{width}}  precision  recall      f1  support'
  line = lambda name, r: (
    f'{name:<{width}}  {r["precision"]:9.4f}  {r["recall"]:6.4f}  '
    f'{r["f1"]:6.4f}  {r["support"]:7d}'
  )
  rows = [line(r['name'], r) for r in report['per_class']]
  rows += [
    '',
    line('macro avg', report['macro_avg']),
    line('weighted avg', report['weighted_avg']),
  ]
  return '\n'.join([head, *rows])
