"""Sequence datasets in host memory: texts as token ids, time series as
features normalised per channel, each split with its lengths.

* texts (``spam_assassin``, ``text_folder``): word ids from a vocabulary of
  the training split only (:class:`.tokens.WordVocab`), or UTF-8 bytes;
* time series (``ucr/<Name>``, e.g. ``ucr/JapaneseVowels``): the official
  train/test split; each channel is centred and scaled by the mean and
  standard deviation of the training steps (padding stays 0).

Validation is carved from train: ``validation_percent`` of each class, by a
fixed permutation (the same for every seed). Truncation is counted and said
in one line; a class found in test but never in train is refused.
"""

import jax
import numpy as np

from jaxcls.data import buckets as buckets_lib
from jaxcls.data import specs, tokens

# Padded lengths when config.max_len is 0: words, bytes; series: the longest.
DEFAULT_MAX_LEN = {'words': tokens.DEFAULT_WORDS, 'bytes': tokens.DEFAULT_BYTES}


def _validation_rows(labels: np.ndarray, percent: int):
  """``(train rows, validation rows)``: ``percent``% of each class (at least
  one where a class has two or more), picked by a fixed permutation; the
  training rows in that permuted order, so that a capped run is mixed."""
  order = np.random.default_rng(0).permutation(len(labels))
  val = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = order[labels[order] == c]
    k = len(rows) * percent // 100 or int(len(rows) > 1)
    val[rows[:k]] = True
  return order[~val[order]], np.flatnonzero(val)


def _check_classes(name, train_labels, test_labels, class_names) -> None:
  """ValueError naming the classes that test has and train lacks."""
  missing = sorted(set(np.unique(test_labels)) - set(np.unique(train_labels)))
  if missing:
    shown = ', '.join(repr(class_names[i]) for i in missing[:5])
    raise ValueError(
      f'{name}: class {shown} is in the test split but has no training '
      'example; add training examples of it, or drop it from test'
    )


def _shards(split: specs.Split, train_examples, num_shards, shard_ids):
  """This process's equal parts of the (capped) training split."""
  n = len(split) if train_examples <= 0 else min(len(split), train_examples)
  per = n // num_shards
  return [_take(split, np.arange(i * per, (i + 1) * per)) for i in shard_ids]


def _take(split: specs.Split, rows) -> specs.Split:
  return specs.Split(
    split.images[rows], split.labels[rows], split.lengths[rows]
  )


def get_builder(name: str, data_dir=None, manual_dir=None):
  """The prepared TFDS builder of sequence dataset ``name``, prepared from
  its files once (:mod:`.text_files`, :mod:`.ucr`); their one-line errors
  name the install command when the files are absent."""
  from jaxcls.data import text_files, ucr  # TFDS: only when read.

  if name == text_files.SPAM_NAME:
    return text_files.get_spam_builder(data_dir, manual_dir)
  if name == text_files.TEXT_FOLDER:
    return text_files.get_text_builder(manual_dir, data_dir)
  return ucr.get_builder(name[len(specs.UCR_PREFIX) :], data_dir, manual_dir)


def _text_splits(name, data_dir, manual_dir, percent):
  """``({split: (texts, labels)}, class names, source)`` of a text set."""
  from jaxcls.data import text_files

  builder = get_builder(name, data_dir, manual_dir)
  texts, labels = text_files.read_texts(builder, 'train')
  train, val = _validation_rows(labels, percent)
  test = text_files.read_texts(builder, 'test')
  out = {
    'train': ([texts[i] for i in train], labels[train]),
    'val': ([texts[i] for i in val], labels[val]),
    'test': test,
  }
  names = tuple(builder.info.features['label'].names)
  return out, names, f'{builder.name}/{builder.builder_config.name}'


def _encode_texts(texts, tokenizer, max_len, vocab_size, headers=True):
  """``(encode, inputs)``: texts -> :class:`.tokens.Padded`, and what
  predict needs to encode new text the same way (``headers=False``: an
  email's headers but the Subject dropped first)."""
  view = (lambda t: t) if headers else tokens.without_headers
  inputs = {'tokens': tokenizer, 'max_len': max_len, 'email_headers': headers}
  if tokenizer == 'bytes':
    return (lambda t: tokens.byte_ids(map(view, t), max_len)), inputs
  vocab = tokens.WordVocab.build(
    map(view, texts), max_words=vocab_size - tokens.WORD_OFFSET
  )
  inputs['words'] = list(vocab.words)
  return (lambda t: vocab.encode(map(view, t), max_len)), inputs


def _ucr_splits(name, data_dir, manual_dir, percent):
  """Like :func:`_text_splits`, for UCR problem ``ucr/<Name>``."""
  from jaxcls.data import ucr

  builder = get_builder(name, data_dir, manual_dir)
  series, labels = ucr.read_split(builder, 'train')
  train, val = _validation_rows(labels, percent)
  out = {
    'train': ([series[i] for i in train], labels[train]),
    'val': ([series[i] for i in val], labels[val]),
    'test': ucr.read_split(builder, 'test'),
  }
  names = tuple(builder.info.features['label'].names)
  return out, names, f'{builder.name}/{builder.builder_config.name}'


def _normalise_series(series, max_len):
  """``(encode, inputs)``: series -> padded, per channel ``(x - mean) /
  std`` with the training steps' statistics (padding stays 0)."""
  steps = np.concatenate(series)
  mean, std = steps.mean(0), steps.std(0)
  std = np.where(std > 0, std, 1.0)

  def encode(xs):
    return tokens.pad([(x - mean) / std for x in xs], max_len, np.float32)

  inputs = {'mean': mean.tolist(), 'std': std.tolist(), 'max_len': max_len}
  return encode, inputs


def load(
  name: str,
  data_dir: str | None = None,
  validation_percent: int = 10,
  train_examples: int = -1,
  num_shards: int = 1,
  shard_ids: tuple[int, ...] = (0,),
  *,
  manual_dir: str | None = None,
  max_len: int = 0,
  tokenizer: str = 'words',
  vocab_size: int = 20_000,
  num_buckets: int = 4,
  email_headers: bool = True,
) -> specs.Data:
  """Loads a sequence dataset's train / validation / test (see module doc).

  Args:
    name, data_dir, manual_dir: 'spam_assassin', 'text_folder' or
      'ucr/<Name>'; TFDS's data folder; the source files' folder.
    validation_percent, train_examples, num_shards, shard_ids: the % of
      each training class that validates; the rest as .sources.load.
    max_len: the steps kept of each sequence (0: the default; for UCR the
      longest series of any split); longer ones are cut, and counted.
    tokenizer, vocab_size, email_headers: 'words' (at most vocab_size ids)
      or 'bytes'; False: emails lose their headers but the Subject.
    num_buckets: the padded lengths a training batch may have (one shard
      only; with several every batch is ``max_len`` long, so that all agree).
  Returns :class:`specs.Data`, with lengths, ``buckets`` and ``inputs``.
  """
  is_text = name in specs.TEXT_DATASETS
  read = _text_splits if is_text else _ucr_splits
  raw, class_names, source = read(
    name, data_dir, manual_dir, validation_percent
  )
  _check_classes(name, raw['train'][1], raw['test'][1], class_names)
  train_part = raw['train'][0][: train_examples if train_examples > 0 else None]
  if is_text:
    max_len = max_len or DEFAULT_MAX_LEN[tokenizer]
    encode, inputs = _encode_texts(
      train_part, tokenizer, max_len, vocab_size, email_headers
    )
  else:
    encode, inputs = _normalise_series(train_part, max_len or _widest(raw))
    max_len = inputs['max_len']
  splits, cut = _padded(raw, encode)
  shards = _shards(splits['train'], train_examples, num_shards, shard_ids)
  buckets = (max_len,)  # Several shards: every batch as wide, all agree.
  if num_shards == 1:
    buckets = buckets_lib.bucket_lengths(
      shards[0].lengths, max_len, num_buckets
    )
  inputs.update(kind='text' if is_text else 'series', buckets=list(buckets))
  if jax.process_index() == 0:
    print(_summary(name, splits, cut, inputs, buckets), flush=True)
  inputs['class_names'] = list(class_names)
  spec = _spec(splits, class_names, is_text)
  val, test = splits['val'], splits['test']
  return specs.Data(shards, val, test, spec, source, buckets, inputs)


def _spec(splits, class_names, is_text: bool) -> specs.DatasetSpec:
  return specs.DatasetSpec(
    splits['train'].images.shape[1:],
    len(class_names),
    False,
    class_names,
    'int32' if is_text else 'float32',
  )


def _widest(raw: dict) -> int:
  """The longest series of any split: the array width only (no labels are
  read), so that by default no series is cut."""
  return max(len(x) for xs, _ in raw.values() for x in xs)


def _padded(raw: dict, encode) -> tuple[dict, dict]:
  """``({split: Split}, {split: (truncated, dropped)})``, each encoded."""
  splits, cut = {}, {}
  for key, (xs, labels) in raw.items():
    padded = encode(xs)
    splits[key] = specs.Split(padded.array, labels, padded.lengths)
    cut[key] = (padded.truncated, padded.dropped)
  return splits, cut


def _summary(name, splits, cut, inputs, buckets) -> str:
  """One line: the splits' sizes, the inputs, what was truncated."""
  sizes = ' / '.join(
    f'{len(splits[k]):,} {k}' for k in ('train', 'val', 'test')
  )
  what = (
    f'{len(inputs["words"]) + tokens.WORD_OFFSET:,} word ids'
    if 'words' in inputs
    else ('UTF-8 byte ids' if 'tokens' in inputs else 'features')
  )
  truncated = sum(t for t, _ in cut.values())
  dropped = sum(d for _, d in cut.values())
  return (
    f'{name}: {sizes} sequences; {what}; padded lengths {list(buckets)}; '
    f'{truncated:,} longer than max_len={inputs["max_len"]} were cut '
    f'({dropped:,} steps dropped)'
  )
