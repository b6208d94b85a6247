"""Texts to int32 ids with nothing to download: UTF-8 bytes, or words.

:func:`byte_ids`, the default: each UTF-8 byte b becomes ``b + BYTE_OFFSET``,
so that 0 is ``PAD`` and 1 is ``BOS`` (an optional first token); the
vocabulary is ``BYTE_VOCAB_SIZE`` = 258 ids, whatever the language.
:class:`WordVocab`: lower-cased ``\\w+`` words, counted on the training split
only (so that test words never leak into it), those seen ``min_count`` times
or more, the ``max_words`` most common (ties: alphabetical); ``PAD`` = 0,
``UNK`` = 1, words from 2.

Each returns a :class:`Padded`: the ids (N, max_len), zero after each text's
end; the lengths kept; how many texts were cut and how many tokens that
dropped. The first ``max_len`` tokens are kept. :func:`pad` stacks other
sequences (a time series' (T, C) steps) the same way.
"""

import collections
import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD = 0
BOS = 1  # byte_ids only
UNK = 1  # WordVocab only
BYTE_OFFSET = 2
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
WORD_OFFSET = 2
DEFAULT_BYTES = 1024
DEFAULT_WORDS = 256
WORD = re.compile(r'\w+')


@dataclasses.dataclass(frozen=True)
class Padded:
  """Sequences stacked to one length: ``array`` (N, max_len, ...), zero
  after each one's ``lengths`` (N,) int32 steps; ``truncated`` of them were
  longer than max_len, ``dropped`` steps were cut off in all."""

  array: np.ndarray
  lengths: np.ndarray
  truncated: int
  dropped: int


def pad(sequences: Sequence, max_len: int = 0, dtype=np.int32) -> Padded:
  """Stacks sequences, keeping the first ``max_len`` steps of each.

  Args:
    sequences: arrays (T_i, ...) of the same trailing shape.
    max_len: the steps kept; 0: the longest sequence's.
    dtype: the array's dtype.

  Returns:
    A :class:`Padded` of shape (N, max_len, ...), zero-padded.
  """
  if max_len < 0:
    raise ValueError(f'max_len must be 0 (the longest) or more, not {max_len}')
  full = np.array([len(s) for s in sequences], np.int64)
  steps = max_len or int(full.max(initial=0))
  tail = np.shape(sequences[0])[1:] if len(sequences) else ()
  out = np.zeros((len(sequences), steps, *tail), dtype)
  for i, s in enumerate(sequences):
    out[i, : min(len(s), steps)] = s[:steps]
  kept = np.minimum(full, steps)
  return Padded(
    out,
    kept.astype(np.int32),
    int((full > kept).sum()),
    int((full - kept).sum()),
  )


def byte_ids(
  texts: Iterable[str], max_len: int = DEFAULT_BYTES, bos: bool = False
) -> Padded:
  """Each text's UTF-8 bytes as ids ``byte + BYTE_OFFSET``.

  Args:
    texts: the texts (lone surrogates are kept, as ``surrogatepass``).
    max_len: the ids kept of each text (BOS included).
    bos: start every text with ``BOS``.

  Returns:
    A :class:`Padded` of int32 ids (N, max_len).
  """
  start = np.array([BOS] if bos else [], np.int32)
  ids = []
  for text in texts:
    raw = np.frombuffer(text.encode('utf-8', 'surrogatepass'), np.uint8)
    ids.append(np.concatenate([start, raw.astype(np.int32) + BYTE_OFFSET]))
  return pad(ids, max_len)


_BLANK_LINE = re.compile(r'\r?\n\r?\n')
_SUBJECT = re.compile(r'^Subject:[^\r\n]*', re.IGNORECASE | re.MULTILINE)


def without_headers(text: str) -> str:
  """An email's Subject line and body: its headers but the Subject (all up
  to the first blank line) dropped, so that a length limit reaches the
  message itself; a text without a blank line is kept whole."""
  parts = _BLANK_LINE.split(text, maxsplit=1)
  if len(parts) == 1:
    return text
  subject = _SUBJECT.search(parts[0])
  return (subject.group(0) + '\n\n' if subject else '') + parts[1]


def words(text: str) -> list[str]:
  """The lower-cased ``\\w+`` words of ``text``, in order."""
  return WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class WordVocab:
  """A word vocabulary: ``words[i]`` is id ``i + WORD_OFFSET``; a word not
  in it is ``UNK``. Saved and restored as its ``words`` (a JSON list)."""

  words: tuple[str, ...]

  @classmethod
  def build(
    cls, train_texts: Iterable[str], min_count: int = 2, max_words=20_000
  ) -> 'WordVocab':
    """The ``max_words`` most common words of the training texts that occur
    ``min_count`` times or more (ties in alphabetical order)."""
    counts = collections.Counter()
    for text in train_texts:
      counts.update(words(text))
    kept = [w for w, n in counts.items() if n >= min_count]
    kept.sort(key=lambda w: (-counts[w], w))
    return cls(tuple(kept[:max_words]))

  @property
  def size(self) -> int:
    """The number of ids, PAD and UNK included."""
    return len(self.words) + WORD_OFFSET

  @functools.cached_property
  def index(self) -> dict[str, int]:
    """Word -> id."""
    return {w: i + WORD_OFFSET for i, w in enumerate(self.words)}

  def encode(self, texts: Iterable[str], max_len: int = DEFAULT_WORDS):
    """A :class:`Padded` of each text's int32 word ids (N, max_len)."""
    get = self.index.get
    ids = [np.array([get(w, UNK) for w in words(t)], np.int32) for t in texts]
    return pad(ids, max_len)
