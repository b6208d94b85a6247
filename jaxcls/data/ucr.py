"""UCR/UEA time-series classification problems from ``.ts`` files (offline).

A ``.ts`` file: ``#`` or ``%`` comments, ``@key value`` header lines
(``@problemName``, ``@missing``, ``@dimensions``, ``@classLabel true A B``)
up to ``@data``, then one series a line: channels separated by ``:``, each a
comma-separated list of numbers, the class label last. :func:`parse_ts` reads
one into float32 arrays (T_i, C) with Python and numpy (no sktime, pandas).

The files come from sktime's wheel (``pip download --no-deps sktime==1.2.0``),
read in place with zipfile (``sktime/datasets/data/<Name>/<Name>_TRAIN.ts``
and ``_TEST.ts``), or from a folder of such files. :func:`get_builder`
prepares one problem as a TFDS dataset (:class:`UcrSeries`) with the official
train/test split. Refused in one line naming the file and line: a missing or
non-finite value, channels of different lengths in one series, a label not
in ``@classLabel``, a regression problem, time stamps.
"""

import dataclasses
import glob
import hashlib
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from jaxcls.data import specs

SKTIME_WHEEL = 'sktime-1.2.0-py3-none-any.whl'
SKTIME_COMMAND = 'pip download --no-deps sktime==1.2.0'
WHEEL_ENV = 'JAXCLS_SKTIME_WHEEL'
NAME = 'ucr_series'
_TS_FILE = re.compile(r'(?:^|/)([^/]+)_(TRAIN|TEST)\.ts$')


class UcrError(ValueError):
  """A ``.ts`` file is malformed, or holds data jaxcls cannot classify."""


class UcrUnavailableError(specs.DatasetUnavailableError):
  """Neither sktime's wheel nor a folder of ``.ts`` files was found."""


@dataclasses.dataclass(frozen=True)
class TsData:
  """One ``.ts`` file: float32 series (T_i, C), int32 labels (label i is
  ``class_names[i]``, in ``@classLabel``'s order) and the header (keys
  lower-cased, values as written)."""

  series: list[np.ndarray]
  labels: np.ndarray
  class_names: tuple[str, ...]
  header: dict[str, str]

  @property
  def channels(self) -> int:
    return self.series[0].shape[1]

  def __len__(self) -> int:
    return len(self.labels)


def _header(lines: list[str], where: str) -> tuple[dict[str, str], int]:
  """``(header, index of the first line after @data)``."""
  header = {}
  for i, raw in enumerate(lines):
    line = raw.strip()
    if not line or line.startswith(('#', '%')):  # % as in UnitTest's.
      continue
    if not line.startswith('@'):
      raise UcrError(f'{where}:{i + 1}: a series before the @data line')
    key, _, value = line[1:].replace('\t', ' ').partition(' ')
    if key.lower() == 'data':
      return header, i + 1
    # UnitTest_TEST.ts names its problem twice: the first name counts.
    header.setdefault(key.lower(), value.strip())
  raise UcrError(f'{where}: no @data line (not a .ts file?)')


def _class_names(header: dict[str, str], where: str) -> tuple[str, ...]:
  """The ``@classLabel`` names, checked: two or more, each once."""
  if header.get('timestamps', 'false').lower() == 'true':
    raise UcrError(f'{where}: @timeStamps true series are not supported')
  words = header.get('classlabel', '').split()
  if not words or words[0].lower() != 'true':
    kind = 'regression' if 'targetlabel' in header else 'unlabelled'
    raise UcrError(
      f'{where}: a {kind} problem (no @classLabel true LABEL ...); jaxcls '
      'classifies'
    )
  names = tuple(words[1:])
  if len(names) < 2 or len(set(names)) != len(names):
    raise UcrError(
      f'{where}: @classLabel must list two or more distinct labels, not {names}'
    )
  return names


def _channel(text: str, where: str, missing: str) -> np.ndarray:
  """One channel's comma-separated numbers as float64, all finite."""
  tokens = text.split(',')
  try:
    values = np.array(tokens, np.float64)
  except ValueError:  # Found below, with float()'s own rules.
    values = np.array([_number(t) for t in tokens], np.float64)
  finite = np.isfinite(values)
  if finite.all():
    return values
  step = int(np.argmin(finite))
  token = tokens[step].strip()
  if token in ('?', '') or token.lower() == 'nan':
    what = 'a missing value'
  else:
    what = 'a non-number' if np.isnan(values[step]) else 'a non-finite value'
  said = ' although @missing is false' if missing == 'false' else ''
  raise UcrError(
    f'{where} step {step + 1}: {what} ({token!r}){said}; jaxcls does not '
    'impute: fill or drop that series'
  )


def _number(token: str) -> float:
  """``float(token)``; NaN for what is not a number (named by the caller)."""
  try:
    return float(token)
  except ValueError:
    return float('nan')


def _series(line: str, where: str, index: dict, missing: str):
  """``(float32 (T, C) array, label index)`` of one data line."""
  *channels, label = line.split(':')
  if not channels:
    raise UcrError(f'{where}: no ":" between the values and the label')
  rows = [
    _channel(c, f'{where}, channel {k}', missing)
    for k, c in enumerate(channels, 1)
  ]
  lengths = [len(r) for r in rows]
  if len(set(lengths)) > 1:
    raise UcrError(
      f'{where}: its channels differ in length ({lengths}); each channel '
      'of a series needs one value per time step'
    )
  if label.strip() not in index:
    raise UcrError(
      f'{where}: label {label.strip()!r} is not in @classLabel '
      f'({" ".join(index)})'
    )
  return np.stack(rows, axis=1).astype(np.float32), index[label.strip()]


def parse_ts(text: str, where: str = '<.ts>') -> TsData:
  """Parses the text of one ``.ts`` file.

  Args:
    text: the file's text.
    where: the file's name, for error messages.
  Returns:
    A :class:`TsData`: a float32 (T_i, C) array per series, int32 labels,
    the class names and the header.
  Raises:
    UcrError: one line naming the file and line (see the module docstring).
  """
  lines = text.splitlines()
  header, start = _header(lines, where)
  names = _class_names(header, where)
  index = {n: i for i, n in enumerate(names)}
  missing = header.get('missing', '').lower()
  one = header.get('univariate', '').lower() == 'true'
  dims = '1' if one else header.get('dimensions', '')
  channels = int(dims) if dims.isdigit() else None
  series, labels = [], []
  for i in range(start, len(lines)):
    if not lines[i].strip() or lines[i].startswith(('#', '%')):
      continue
    at = f'{where}:{i + 1}'
    x, y = _series(lines[i].strip(), at, index, missing)
    channels = channels or x.shape[1]
    if x.shape[1] != channels:
      raise UcrError(f'{at}: {x.shape[1]} channels, expected {channels}')
    series.append(x)
    labels.append(y)
  if not series:
    raise UcrError(f'{where}: no series after @data')
  lengths = {len(x) for x in series}
  if header.get('equallength', '').lower() == 'true' and len(lengths) > 1:
    raise UcrError(
      f'{where}: @equalLength true, but the series have lengths from '
      f'{min(lengths)} to {max(lengths)}'
    )
  return TsData(series, np.asarray(labels, np.int32), names, header)


def _zip(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise UcrError(f'cannot read {path} as a wheel (zip): {e}') from None


def problems(path: str) -> dict[str, dict[str, str]]:
  """``{Name: {'train': ref, 'test': ref}}`` of the problems in a wheel
  (refs: member names) or a folder (refs: ``<Name>_TRAIN.ts`` paths in it
  or one folder down) that have both files."""
  if os.path.isdir(path):
    top = glob.escape(path)
    refs = glob.glob(os.path.join(top, '*.ts'))
    refs += glob.glob(os.path.join(top, '*', '*.ts'))
  else:
    with _zip(path) as z:
      refs = z.namelist()
  found = {}
  for ref in sorted(refs):
    if m := _TS_FILE.search(ref.replace(os.sep, '/')):
      found.setdefault(m.group(1), {})[m.group(2).lower()] = ref
  return {n: s for n, s in found.items() if len(s) == 2}


def _texts(path: str, name: str) -> tuple[str, dict[str, tuple[str, str]]]:
  """``(Name as spelled in path, {split: (where, text)})`` of a problem
  (``name`` matched without regard to case)."""
  listing = problems(path)
  match = {n.lower(): n for n in listing}.get(name.lower())
  if match is None:
    raise UcrError(
      f'{path} has no problem {name!r} (<Name>_TRAIN.ts and _TEST.ts); '
      f'it has {", ".join(sorted(listing)) or "none"}'
    )
  out = {}
  for split, ref in listing[match].items():
    where = ref if os.path.isdir(path) else f'{path}:{ref}'
    try:
      if os.path.isdir(path):
        with open(ref, 'rb') as f:
          raw = f.read()
      else:
        with _zip(path) as z:
          raw = z.read(ref)
      out[split] = where, raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise UcrError(f'{where}: not UTF-8 (byte {e.start})') from None
    except (OSError, zipfile.BadZipFile) as e:
      raise UcrError(f'cannot read {where}: {e}') from None
  return match, out


def _parse_problem(texts: dict[str, tuple[str, str]]) -> dict[str, TsData]:
  """Both splits parsed, with the same classes and channels."""
  data = {s: parse_ts(text, where) for s, (where, text) in texts.items()}
  train, test = data['train'], data['test']
  if train.class_names != test.class_names:
    raise UcrError(
      f'{texts["test"][0]}: @classLabel {test.class_names} differs from '
      f"the training file's {train.class_names}"
    )
  if train.channels != test.channels:
    raise UcrError(
      f'{texts["test"][0]}: {test.channels} channels, the training file '
      f'has {train.channels}'
    )
  return data


def read_problem(path: str, name: str) -> dict[str, TsData]:
  """``{'train': TsData, 'test': TsData}`` of problem ``name``.

  Args:
    path: sktime's wheel, or a folder of ``<Name>_TRAIN.ts`` and
      ``<Name>_TEST.ts`` (or of ``<Name>/`` folders of them).
    name: the problem, e.g. ``JapaneseVowels`` (any case).
  Raises:
    UcrError: an unknown name (the available ones listed), a bad file.
  """
  return _parse_problem(_texts(path, name)[1])


class UcrSeries(tfds.core.GeneratorBasedBuilder):
  """One UCR/UEA problem, built from its parsed splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'UCR/UEA .ts problems, the official split.'}

  def __init__(self, *, problem: dict[str, TsData], **kwargs):
    self._problem = problem
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    train = self._problem['train']
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'series': tfds.features.Tensor(
            shape=(None, train.channels), dtype=np.float32
          ),
          'length': tfds.features.Scalar(dtype=np.int32),
          'label': tfds.features.ClassLabel(names=list(train.class_names)),
        }
      ),
      supervised_keys=('series', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Parsed already.
    return {s: self._generate_examples(d) for s, d in self._problem.items()}

  def _generate_examples(self, data: TsData):
    for i, (x, y) in enumerate(zip(data.series, data.labels)):
      yield i, {'series': x, 'length': len(x), 'label': int(y)}


def _data_root(data_dir: str | None) -> str:
  return os.path.expanduser(
    data_dir or tfds.core.constants.get_default_data_dir()
  )


def find_source(manual_dir=None, data_dir=None) -> str | None:
  """The wheel or folder of ``.ts`` files to read; None if not found.

  Looked for in ``manual_dir`` alone if given, else in
  ``<data_dir>/downloads/manual/ucr``, ``.../manual`` and
  ``$JAXCLS_SKTIME_WHEEL``: a file, a folder holding ``sktime-*.whl``, or
  one holding ``.ts`` problems.
  """
  manual = os.path.join(_data_root(data_dir), 'downloads', 'manual')
  paths = [manual_dir] if manual_dir else [f'{manual}/ucr', manual]
  env = [] if manual_dir else [os.environ.get(WHEEL_ENV, '')]
  for path in map(os.path.expanduser, filter(None, paths + env)):
    wheels = sorted(glob.glob(os.path.join(glob.escape(path), 'sktime-*.whl')))
    if os.path.isfile(path) or wheels:
      return wheels[-1] if wheels else path
    if os.path.isdir(path) and problems(path):
      return path
  return None


def _copies(root: str, name: str) -> list[str]:
  version = str(UcrSeries.VERSION)
  pattern = os.path.join(glob.escape(root), NAME, f'{name.lower()}_*', version)
  found = glob.glob(pattern)
  return [p for p in found if os.path.exists(f'{p}/dataset_info.json')]


def get_builder(
  name: str, data_dir: str | None = None, manual_dir: str | None = None
):
  """The prepared TFDS dataset of UCR problem ``name``: the copy of the
  files as they are now (``<data_dir>/ucr_series/<name>_<hash of their
  text>/``), prepared unless it exists; without files (:func:`find_source`),
  the newest prepared copy.

  Raises:
    UcrUnavailableError: no files (or none in an explicit ``manual_dir``)
      and no prepared copy; the line names the pip command.
    UcrError: an unknown problem name or a bad file.
  """
  root = _data_root(data_dir)
  source = find_source(manual_dir, data_dir)
  copies = [] if source or manual_dir else _copies(root, name)
  if source is None and not copies:
    raise UcrUnavailableError(
      f'UCR problem {name!r} is not prepared and no wheel or .ts files were '
      f'found in {manual_dir or f"{root}/downloads/manual/ucr"}: run '
      f'`{SKTIME_COMMAND}` and put {SKTIME_WHEEL} there, or pass '
      f'--config.manual_dir=FOLDER (or set ${WHEEL_ENV} to the wheel)'
    )
  if source is None:
    return tfds.builder_from_directory(max(copies, key=os.path.getmtime))
  spelled, texts = _texts(source, name)
  digest = hashlib.sha256()
  for split in ('train', 'test'):
    digest.update(texts[split][1].encode())
  config = f'{spelled.lower()}_{digest.hexdigest()[:12]}'
  path = os.path.join(root, NAME, config, str(UcrSeries.VERSION))
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    builder = UcrSeries(
      problem=_parse_problem(texts),
      data_dir=root,
      config=tfds.core.BuilderConfig(
        name=config, description=f'{spelled} of {source}'
      ),
    )
    specs.prepare(builder)
  return tfds.builder_from_directory(path)


def read_split(builder, split: str) -> tuple[list[np.ndarray], np.ndarray]:
  """``(float32 (T_i, C) series, int32 labels)`` of a prepared split."""
  series, labels = [], []
  ds = builder.as_dataset(split=split, shuffle_files=False)
  for example in tfds.as_numpy(ds):
    series.append(example['series'])
    labels.append(example['label'])
  return series, np.asarray(labels, np.int32)
