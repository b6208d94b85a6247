"""Per-class scores against scikit-learn, and the calibration error against
a plain loop and cases worked by hand."""

import json

import numpy as np
import pytest
from sklearn import metrics as sk

from jaxcls.training import inspection, scores

K = 6
NAMES = [f'c{i}' for i in range(K)]


@pytest.fixture(params=[0, 1, 2])
def sample(request):
  """Random labels and predictions: class 4 is never predicted, class 5
  never present (but predicted); the probabilities' argmax is the guess."""
  rng = np.random.default_rng(request.param)
  n = 500
  labels = rng.integers(0, 5, n)
  guess = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 6, n))
  guess[guess == 4] = 5
  logits = rng.normal(size=(n, K))
  # The guess's logit on top, by a random margin: confidences spread out.
  logits[np.arange(n), guess] = logits.max(-1) + 3 * rng.random(n)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  assert (probs.argmax(-1) == guess).all()
  matrix = inspection.confusion_matrix(labels, guess, K)
  return labels, guess, probs, matrix


def test_per_class_matches_precision_recall_fscore_support(sample):
  labels, guess, _, matrix = sample
  assert matrix[:, 4].sum() == 0 and matrix[5].sum() == 0
  got = scores.per_class(matrix)
  want = sk.precision_recall_fscore_support(
    labels, guess, labels=range(K), zero_division=0
  )
  for key, expected in zip(('precision', 'recall', 'f1', 'support'), want):
    np.testing.assert_allclose(got[key], expected, rtol=1e-12, err_msg=key)
  assert got['precision'][4] == 0 and got['recall'][5] == 0
  assert got['f1'][4] == 0 and got['f1'][5] == 0


def test_summary_matches_classification_report(sample):
  labels, guess, probs, matrix = sample
  got = scores.summary(matrix, NAMES, probs, labels)
  want = sk.classification_report(
    labels,
    guess,
    labels=range(K),
    target_names=NAMES,
    output_dict=True,
    zero_division=0,
  )
  assert [row['name'] for row in got['per_class']] == NAMES
  rows = [(row['name'], row) for row in got['per_class']]
  rows += [
    ('macro avg', got['macro_avg']),
    ('weighted avg', got['weighted_avg']),
  ]
  keys = {'precision': 'precision', 'recall': 'recall', 'f1': 'f1-score'}
  for name, row in rows:
    for key, sk_key in keys.items():
      expected = want[name][sk_key]
      assert row[key] == pytest.approx(expected, abs=1e-12), (name, key)
    assert row['support'] == want[name]['support'], name
  assert got['accuracy'] == pytest.approx(sk.accuracy_score(labels, guess))
  json.loads(json.dumps(got, allow_nan=False))  # Plain, finite JSON.


def test_zero_support_everywhere_gives_zeros():
  got = scores.averages(scores.per_class(np.zeros((3, 3), int)))
  assert got['macro'] == {'precision': 0, 'recall': 0, 'f1': 0, 'support': 0}
  assert got['weighted'] == got['macro']


def loop_ece(probs, labels, num_bins):
  """The textbook definition, one example and one bin at a time."""
  edges = [b / num_bins for b in range(num_bins + 1)]
  total = 0.0
  for b in range(num_bins):
    confs, hits = [], []
    for p, label in zip(probs, labels):
      c = max(p)
      lower_ok = edges[b] < c or (b == 0 and c == 0)
      if lower_ok and c <= edges[b + 1]:
        confs.append(c)
        hits.append(float(list(p).index(c) == label))
    if confs:
      gap = abs(sum(hits) / len(hits) - sum(confs) / len(confs))
      total += gap * len(confs) / len(probs)
  return total


@pytest.mark.parametrize('num_bins', [15, 4, 1])
def test_ece_matches_a_plain_loop(sample, num_bins):
  labels, _, probs, _ = sample
  bins = scores.reliability_bins(probs, labels, num_bins)
  assert bins['count'].sum() == len(labels)
  got = scores.expected_calibration_error(bins)
  assert got == pytest.approx(loop_ece(probs, labels, num_bins), abs=1e-12)
  assert got > 0.01  # Random logits are not calibrated.


def test_ece_by_hand():
  labels = np.array([0, 1, 2, 0])
  sure = np.eye(3)[labels]
  assert (
    scores.expected_calibration_error(scores.reliability_bins(sure, labels))
    == 0
  )
  # All at 0.9 confidence, 3 of 4 right: one bin, |0.75 - 0.9| = 0.15.
  probs = np.full((4, 3), 0.05)
  probs[np.arange(4), [0, 1, 2, 1]] = 0.9
  bins = scores.reliability_bins(probs, labels)
  assert bins['count'].tolist() == [0] * 13 + [4, 0]  # 0.9 in (13/15, 14/15]
  assert bins['accuracy'][13] == 0.75
  assert scores.expected_calibration_error(bins) == pytest.approx(0.15)
  # Confidences 0.7 (right, gap 0.3) and 1.0 (wrong, gap 1), half each.
  probs = np.array([[0.7, 0.3], [0.0, 1.0]])
  bins = scores.reliability_bins(probs, np.array([0, 0]), num_bins=5)
  assert bins['count'].tolist() == [0, 0, 0, 1, 1]
  assert scores.expected_calibration_error(bins) == pytest.approx(0.65)
  # In one bin of both: accuracy 0.5, confidence 0.85.
  bins = scores.reliability_bins(probs, np.array([0, 0]), num_bins=2)
  assert bins['count'].tolist() == [0, 2]
  assert scores.expected_calibration_error(bins) == pytest.approx(0.35)


def test_empty_bins_are_none_in_the_summary():
  labels = np.array([0, 1])
  report = scores.summary(np.eye(2, dtype=int), ['a', 'b'], np.eye(2), labels)
  assert report['ece'] == 0
  assert [r['count'] for r in report['reliability']] == [0] * 14 + [2]
  assert report['reliability'][0]['confidence'] is None
  assert report['reliability'][-1] == {
    'lower': pytest.approx(14 / 15),
    'upper': 1.0,
    'confidence': 1.0,
    'accuracy': 1.0,
    'count': 2,
  }


def test_top_confusions_are_largest_first_ties_by_row_then_column():
  m = np.array([[50, 3, 7], [7, 40, 0], [1, 7, 30]])
  names = ['Shirt', 'T-shirt/top', 'Coat']
  assert scores.top_confusions(m, names, k=4) == [
    'Shirt -> Coat: 7',
    'T-shirt/top -> Shirt: 7',
    'Coat -> T-shirt/top: 7',
    'Shirt -> T-shirt/top: 3',
  ]
  # Fewer non-zero off-diagonal cells than k: the zeros are left out.
  assert scores.top_confusions(m, names, k=10)[-1] == 'Coat -> Shirt: 1'
  assert len(scores.top_confusions(m, names, k=10)) == 5
  assert scores.top_confusions(np.diag([5, 5, 5]), names) == []
  with pytest.raises(ValueError, match='2 names for 3 classes'):
    scores.top_confusions(m, names[:2])


def test_table_lists_every_class_then_the_averages(sample):
  labels, _, probs, matrix = sample
  report = scores.summary(matrix, NAMES, probs, labels)
  lines = scores.format_table(report).splitlines()
  assert lines[0].split() == ['precision', 'recall', 'f1', 'support']
  assert [ln.split()[0] for ln in lines[1 : K + 1]] == NAMES
  assert lines[-2].startswith('macro avg')
  assert lines[-1].startswith('weighted avg')
  assert lines[-1].split()[-1] == str(len(labels))
  assert float(lines[1].split()[2]) == pytest.approx(
    report['per_class'][0]['recall'], abs=5e-5
  )
