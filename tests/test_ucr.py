"""UCR/UEA ``.ts`` problems: the parser, sktime's wheel and the TFDS builder.

The real files are read from sktime's wheel (``pip download --no-deps
sktime==1.2.0``) at ``$JAXCLS_SKTIME_WHEEL``; without it those tests skip.
Every error case runs on small synthetic files.
"""

import os
import zipfile

import numpy as np
import pytest

from jaxcls.data import ucr

# Where .ci/run fetches the files (an ignored folder of the checkout).
DOWNLOADS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  'data',
  'downloads',
)
WHEEL = os.environ.get(
  'JAXCLS_SKTIME_WHEEL',
  f'{DOWNLOADS}/sktime-1.2.0-py3-none-any.whl',
)
needs_wheel = pytest.mark.skipif(
  not os.path.isfile(WHEEL),
  reason=f'no sktime wheel at {WHEEL}: run `{ucr.SKTIME_COMMAND}` and set '
  'JAXCLS_SKTIME_WHEEL to it',
)
JV = 'sktime/datasets/data/JapaneseVowels/JapaneseVowels_{}.ts'

HEADER = """# a comment
@problemName Toy
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
"""
GOOD = HEADER + '1,2,3:4,5,6:a\n0.5,-1e-3:7,8:b\n'


@pytest.fixture(scope='module')
def vowels():
  if not os.path.isfile(WHEEL):
    pytest.skip(f'no sktime wheel at {WHEEL}')
  return ucr.read_problem(WHEEL, 'JapaneseVowels')


def _error(text: str) -> str:
  with pytest.raises(ucr.UcrError) as e:
    ucr.parse_ts(text, 'toy.ts')
  message = str(e.value)
  assert '\n' not in message
  return message


def _folder(tmp_path, train=GOOD, test=GOOD, name='Toy'):
  (tmp_path / f'{name}_TRAIN.ts').write_text(train)
  (tmp_path / f'{name}_TEST.ts').write_text(test)
  return str(tmp_path)


# ------------------------------------------------------------------ parser.


def test_parse_a_small_file():
  data = ucr.parse_ts(GOOD)
  assert data.class_names == ('a', 'b')
  assert data.labels.tolist() == [0, 1] and data.labels.dtype == np.int32
  assert [x.shape for x in data.series] == [(3, 2), (2, 2)]
  assert data.series[0].dtype == np.float32
  np.testing.assert_array_equal(data.series[0], [[1, 4], [2, 5], [3, 6]])
  np.testing.assert_array_equal(data.series[1][:, 0], np.float32([0.5, -1e-3]))
  assert data.header['problemname'] == 'Toy' and data.channels == 2


def test_a_missing_value_names_the_line_and_the_header():
  message = _error(HEADER + '1,2:3,4:a\n1,?,3:4,5,6:b\n')
  assert 'toy.ts:11, channel 1 step 2' in message
  assert "a missing value ('?')" in message
  assert '@missing is false' in message
  message = _error(
    HEADER.replace('@missing false', '@missing true') + '1,NaN:3,4:a\n'
  )
  assert 'toy.ts:10, channel 1 step 2: a missing value' in message
  assert '@missing is false' not in message


def test_non_numbers_and_infinities_are_refused():
  assert "a non-number ('x')" in _error(HEADER + '1,x:3,4:a\n')
  assert "a non-finite value ('inf')" in _error(HEADER + '1,2:inf,4:a\n')


def test_ragged_channels_within_a_series():
  message = _error(HEADER + '1,2,3:4,5:a\n')
  assert 'toy.ts:10: its channels differ in length ([3, 2])' in message


def test_a_label_not_in_classlabel():
  message = _error(HEADER + '1,2:3,4:c\n')
  assert "toy.ts:10: label 'c' is not in @classLabel (a b)" in message


def test_other_malformed_files():
  assert 'no @data line' in _error('@problemName x\n')
  assert 'regression problem' in _error(
    '@problemName r\n@targetLabel true\n@data\n1,2:0.5\n'
  )
  assert 'unlabelled problem' in _error('@classLabel false\n@data\n1:2\n')
  assert 'two or more distinct' in _error('@classLabel true a a\n@data\n')
  assert '@timeStamps true' in _error(
    HEADER.replace('@timeStamps false', '@timeStamps true') + '1:2:a\n'
  )
  assert 'toy.ts:10: 1 channels, expected 2' in _error(HEADER + '1,2:a\n')
  assert 'no series after @data' in _error(HEADER)
  assert 'toy.ts:1: a series before the @data line' in _error('1,2:a\n')
  equal = HEADER.replace('@equalLength false', '@equalLength true')
  assert 'lengths from 2 to 3' in _error(equal + '1,2,3:4,5,6:a\n1,2:3,4:b\n')


# ------------------------------------------------------------------ reader.


def test_a_folder_of_ts_files(tmp_path):
  folder = _folder(tmp_path)
  assert ucr.problems(folder) == {
    'Toy': {'test': f'{folder}/Toy_TEST.ts', 'train': f'{folder}/Toy_TRAIN.ts'}
  }
  data = ucr.read_problem(folder, 'toy')  # any case
  assert len(data['train']) == len(data['test']) == 2


def test_unknown_problem_lists_the_available_ones(tmp_path):
  with pytest.raises(ucr.UcrError, match=r"no problem 'Nope'.*it has Toy$"):
    ucr.read_problem(_folder(tmp_path), 'Nope')


def test_train_and_test_must_agree(tmp_path):
  other = GOOD.replace('@classLabel true a b', '@classLabel true a b c')
  with pytest.raises(ucr.UcrError, match='differs from the training file'):
    ucr.read_problem(_folder(tmp_path, test=other), 'Toy')


def test_a_file_that_is_no_wheel(tmp_path):
  bad = tmp_path / 'sktime-1.2.0-py3-none-any.whl'
  bad.write_bytes(b'not a zip')
  with pytest.raises(ucr.UcrError, match='cannot read .* as a wheel'):
    ucr.read_problem(str(bad), 'JapaneseVowels')


def test_wheel_absent_names_the_pip_command(tmp_path, monkeypatch):
  monkeypatch.delenv(ucr.WHEEL_ENV, raising=False)
  with pytest.raises(ucr.UcrUnavailableError) as e:
    ucr.get_builder('JapaneseVowels', str(tmp_path))
  message = str(e.value)
  assert 'pip download --no-deps sktime==1.2.0' in message
  assert f'{tmp_path}/downloads/manual/ucr' in message and '\n' not in message
  with pytest.raises(ucr.UcrUnavailableError, match='found in /nowhere'):
    ucr.get_builder('JapaneseVowels', str(tmp_path), manual_dir='/nowhere')


def test_find_source_order(tmp_path, monkeypatch):
  manual = tmp_path / 'downloads' / 'manual' / 'ucr'
  manual.mkdir(parents=True)
  monkeypatch.setenv(ucr.WHEEL_ENV, '/somewhere/sktime.whl')
  assert ucr.find_source(None, str(tmp_path)) is None
  (manual / 'sktime-1.2.0-py3-none-any.whl').write_bytes(b'')
  assert ucr.find_source(None, str(tmp_path)) == f'{manual}/{ucr.SKTIME_WHEEL}'
  assert ucr.find_source(str(manual), None) == f'{manual}/{ucr.SKTIME_WHEEL}'


# ------------------------------------------------------------ real files.


@needs_wheel
def test_japanese_vowels_counts(vowels):
  train, test = vowels['train'], vowels['test']
  assert (len(train), len(test)) == (270, 370)
  assert train.channels == test.channels == 12
  assert train.class_names == tuple('123456789')
  lengths = [len(x) for d in (train, test) for x in d.series]
  assert (min(lengths), max(lengths)) == (7, 29)
  assert np.bincount(train.labels).tolist() == [30] * 9
  assert np.bincount(test.labels).tolist() == [
    31,
    35,
    88,
    44,
    29,
    24,
    40,
    50,
    29,
  ]


@needs_wheel
def test_a_parsed_series_equals_the_text(vowels):
  with zipfile.ZipFile(WHEEL) as z:
    lines = z.read(JV.format('TEST')).decode().splitlines()
  rows = lines[lines.index('@data') + 1 :]
  for i in (0, 123, len(rows) - 1):
    *channels, label = rows[i].split(':')
    want = np.array(
      [[np.float32(float(v)) for v in c.split(',')] for c in channels]
    ).T
    np.testing.assert_array_equal(vowels['test'].series[i], want)
    assert vowels['test'].class_names[vowels['test'].labels[i]] == label


@needs_wheel
def test_every_problem_in_the_wheel_parses_or_is_refused():
  names = ucr.problems(WHEEL)
  assert {'JapaneseVowels', 'BasicMotions', 'GunPoint'} <= set(names)
  for name in names:
    if name in ('Covid3Month', 'Tecator'):
      with pytest.raises(ucr.UcrError, match='regression problem'):
        ucr.read_problem(WHEEL, name)
    else:
      assert len(ucr.read_problem(WHEEL, name)['test']) > 0
  assert ucr.read_problem(WHEEL, 'BasicMotions')['train'].channels == 6


@needs_wheel
def test_the_builder_prepares_the_official_split(tmp_path, vowels, monkeypatch):
  builder = ucr.get_builder('JapaneseVowels', str(tmp_path), manual_dir=WHEEL)
  features = builder.info.features
  assert features['series'].shape == (None, 12)
  assert features['label'].names == [str(i) for i in range(1, 10)]
  splits = builder.info.splits
  assert (splits['train'].num_examples, splits['test'].num_examples) == (
    270,
    370,
  )
  series, labels = ucr.read_split(builder, 'train')
  assert sorted(map(len, series)) == sorted(map(len, vowels['train'].series))
  assert np.bincount(labels).tolist() == [30] * 9
  want = sorted(x.sum() for x in vowels['train'].series)
  np.testing.assert_allclose(sorted(x.sum() for x in series), want, rtol=1e-6)
  lengths = [int(e['length']) for e in builder.as_dataset(split='test')]
  assert min(lengths) == 7 and max(lengths) == 29
  # Prepared once: the same copy, also without the wheel.
  again = ucr.get_builder('japanesevowels', str(tmp_path), manual_dir=WHEEL)
  assert again.data_dir == builder.data_dir
  monkeypatch.delenv(ucr.WHEEL_ENV, raising=False)
  assert ucr.get_builder('JapaneseVowels', str(tmp_path)).data_dir == (
    builder.data_dir
  )
