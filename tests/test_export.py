"""Exports (jax.export and TF SavedModel) give the checkpoint model's outputs.

The reference is always the restored model applied by hand (numpy
normalisation, numpy softmax), never the export code's own serving function.
"""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from PIL import Image

from experiments import predict
from jaxcls import config as config_lib
from jaxcls import data, export, models, optim
from jaxcls.training import inspection
from jaxcls.training import run as train
from trained_workdir import trained_workdir

pytestmark = pytest.mark.slow  # Trains models: the full tier.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (28, 28, 1)
# Batch sizes other than the 3 the export checks itself with.
BATCH_SIZES = (1, 7)


def reference(state, images: np.ndarray, variables=None):
  """``(probabilities, logits)`` of the model, normalised by hand."""
  variables = variables or {'params': state.params}
  logits = np.asarray(
    state.apply_fn(
      variables, (images.astype(np.float32) / 255 - 0.5) / 0.5, train=False
    )
  )
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True), logits


def random_images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(
    0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8
  )


def run_jax(folder: str, images: np.ndarray) -> dict:
  """The serving.jax in ``folder``, read with jax alone."""
  with open(os.path.join(folder, export.SERVING_FILE), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return jax.device_get(exported.call(images))


def run_tf(folder: str, images: np.ndarray) -> dict:
  """The SavedModel in ``folder``, read with TensorFlow alone."""
  import tensorflow as tf

  loaded = tf.saved_model.load(os.path.join(folder, export.SAVED_MODEL_DIR))
  out = loaded.signatures['serving_default'](images=tf.constant(images))
  return {k: v.numpy() for k, v in out.items()}


def run_onnx(folder: str, images: np.ndarray) -> dict:
  """The model.onnx in ``folder``, read with onnxruntime alone."""
  pytest.importorskip('jax2onnx')  # Without it, 'all' skips model.onnx.
  ort = pytest.importorskip('onnxruntime')
  session = ort.InferenceSession(
    os.path.join(folder, export.ONNX_FILE), providers=['CPUExecutionProvider']
  )
  names = list(export.OUTPUT_NAMES)
  return dict(zip(names, session.run(names, {export.INPUT_NAME: images})))


RUNNERS = {'jax': run_jax, 'saved_model': run_tf, 'onnx': run_onnx}


def assert_same_outputs(out: dict, state, images, variables=None):
  probs, logits = reference(state, images, variables)
  assert out['probabilities'].shape == probs.shape
  assert out['probabilities'].dtype == np.float32
  np.testing.assert_allclose(out['probabilities'], probs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['logits'], logits, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def cnn_export(tmp_path_factory):
  """The shared tiny CNN workdir, exported in both formats."""
  workdir, results = trained_workdir()
  folder = str(tmp_path_factory.mktemp('cnn') / 'export')
  _, meta = export.export_workdir(workdir, export.FORMATS, folder)
  return workdir, results, folder, meta


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_cnn_export_matches_checkpoint_model(cnn_export, fmt):
  workdir, _, folder, _ = cnn_export
  _, state = inspection.load_best(workdir)
  split = data.read_split(data.get_builder('fashion_mnist'), 'test[:5]')
  for images in (split.images, *(random_images(n) for n in BATCH_SIZES)):
    assert_same_outputs(RUNNERS[fmt](folder, images), state, images)


@pytest.mark.parametrize(
  'cell', [pytest.param('lstm', marks=pytest.mark.slow), 'gru']
)
def test_recurrent_export_matches_model(tmp_path, cell):
  config = config_lib.get_config()
  config.dataset, config.model = 'fashion_mnist', cell
  config.hidden_size = 16
  state = train.create_train_state(
    jax.random.key(3),
    models.create_model(config, 10),
    optim.create_optimizer(config, 1),
    IMAGE_SHAPE,
  )
  folder = str(tmp_path / 'export')
  export.write(config, state, folder)
  for fmt, n in zip(export.FORMATS, BATCH_SIZES):
    images = random_images(n, seed=n)
    assert_same_outputs(RUNNERS[fmt](folder, images), state, images)


class BatchNormNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(x.reshape((x.shape[0], -1)))
    return nn.Dense(10)(x)


class StateWithStats(train_state.TrainState):
  batch_stats: dict


def test_export_keeps_batch_norm_running_statistics(tmp_path):
  model = BatchNormNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
  # Running statistics far from init's (mean 0, var 1): they must be used.
  stats = jax.tree_util.tree_map(lambda x: x + 3.0, variables['batch_stats'])
  state = StateWithStats.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=optax.sgd(0.1),
    batch_stats=stats,
  )
  config = config_lib.get_config()
  config.dataset = 'fashion_mnist'
  folder = str(tmp_path / 'export')
  export.write(config, state, folder, formats=('jax',))
  images = random_images(2)
  out = run_jax(folder, images)
  assert_same_outputs(
    out, state, images, {'params': state.params, 'batch_stats': stats}
  )
  init_probs, _ = reference(state, images, variables)  # init statistics
  assert not np.allclose(out['probabilities'], init_probs, atol=1e-3)


def test_export_json_describes_the_export(cnn_export):
  workdir, results, folder, meta = cnn_export
  with open(os.path.join(folder, export.METADATA_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(meta))
  _, state = inspection.load_best(workdir)
  assert meta['class_names'] == list(data.get_spec('fashion_mnist').class_names)
  assert meta['input']['shape'] == [None, 28, 28, 1]
  assert meta['input']['dtype'] == 'uint8'
  assert (
    meta['config_fingerprint']
    == inspection.best_meta(workdir)['fingerprint']
    == results['config_fingerprint']
  )
  assert meta['checkpoint_step'] == int(state.step)
  assert meta['test_accuracy'] == results['test_accuracy']
  assert meta['best_epoch'] == results['best_epoch']
  assert meta['versions']['jax'] == jax.__version__
  import tensorflow as tf
  from tensorflow.compiler.tf2xla.python import xla as tfxla

  assert meta['versions']['tensorflow'] == tf.__version__
  # google/flax #5054: the TF that loads the SavedModel must run this version.
  assert (
    meta['files']['saved_model']['xla_call_module_version']
    <= tfxla.call_module_maximum_supported_version()
  )
  assert meta['files']['jax']['platforms'] == ['cpu', 'cuda']
  jax_file = os.path.join(folder, export.SERVING_FILE)
  assert meta['files']['jax']['sha256'] == export.common.sha256(jax_file)


def test_test_accuracy_only_from_results_of_this_checkpoint(tmp_path):
  results = {'config_fingerprint': 'abc', 'test_accuracy': 0.9, 'best_epoch': 2}
  (tmp_path / 'results.json').write_text(json.dumps(results))
  run_results = export.writing._run_results  # pylint: disable=protected-access
  meta = {'fingerprint': 'abc', 'epoch': 2, 'best_val_accuracy': 0.8}
  assert run_results(str(tmp_path), meta)['test_accuracy'] == 0.9
  # A newer best checkpoint (a live run), another config, a corrupt file.
  assert 'test_accuracy' not in run_results(str(tmp_path), {**meta, 'epoch': 3})
  assert 'test_accuracy' not in run_results(
    str(tmp_path), {**meta, 'fingerprint': 'other'}
  )
  (tmp_path / 'results.json').write_text('{corrupt')
  found = run_results(str(tmp_path), meta)
  assert 'test_accuracy' not in found and found['best_epoch'] == 2


def write_pngs(folder, images) -> list[str]:
  paths = []
  for i, image in enumerate(images):
    paths.append(os.path.join(folder, f'{i}.png'))
    Image.fromarray(image[..., 0]).save(paths[-1])
  return paths


@pytest.mark.parametrize('which', ['folder', 'jax', 'saved_model'])
def test_predict_from_export_equals_predict_from_checkpoint(
  tmp_path, cnn_export, which
):
  workdir, _, folder, _ = cnn_export
  paths = write_pngs(tmp_path, random_images(3))
  path = {
    'folder': folder,
    'jax': os.path.join(folder, export.SERVING_FILE),
    'saved_model': os.path.join(folder, export.SAVED_MODEL_DIR),
  }[which]
  expected = predict.predict(workdir, paths, k=10)
  got = predict.predict_exported(path, paths, k=10)
  for want, have in zip(expected, got):
    assert [n for n, _ in have] == [n for n, _ in want]
    np.testing.assert_allclose(
      [p for _, p in have], [p for _, p in want], rtol=1e-5, atol=1e-6
    )


def copy_export(src: str, dst) -> str:
  import shutil

  return shutil.copytree(src, str(dst / 'export'))


def flip_byte(path: str, offset_fraction: float = 0.5) -> None:
  with open(path, 'rb') as f:
    raw = bytearray(f.read())
  raw[int(len(raw) * offset_fraction)] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(raw)


def wrong_exports(folder: str, tmp_path) -> dict:
  """name -> (path to pass, expected message) for damaged or wrong files."""
  cases = {}
  damaged = copy_export(folder, tmp_path / 'damaged')
  flip_byte(os.path.join(damaged, export.SERVING_FILE))
  cases['flipped byte'] = (damaged, 'damaged or replaced')
  alone = tmp_path / 'truncated.jax'
  with open(os.path.join(folder, export.SERVING_FILE), 'rb') as f:
    alone.write_bytes(f.read()[:1000])
  cases['truncated, no export.json'] = (str(alone), 'not a jax.export')
  png = tmp_path / 'image.png'
  Image.new('L', (4, 4)).save(png)
  cases['an image'] = (str(png), 'not a jax.export')
  other = tmp_path / 'other.jax'
  other.write_bytes(
    jax.export.export(jax.jit(jnp.sin))(
      jax.ShapeDtypeStruct((3,), jnp.float32)
    ).serialize()
  )
  cases['another function'] = (str(other), 'not a jaxcls serving export')
  bad_model = copy_export(folder, tmp_path / 'bad_model')
  os.remove(os.path.join(bad_model, export.SERVING_FILE))
  flip_byte(
    os.path.join(bad_model, export.SAVED_MODEL_DIR, 'saved_model.pb'), 0.01
  )
  cases['damaged saved_model.pb'] = (bad_model, 'damaged or replaced')
  lone_model = copy_export(folder, tmp_path / 'lone')
  pb = os.path.join(lone_model, export.SAVED_MODEL_DIR, 'saved_model.pb')
  with open(pb, 'r+b') as f:
    f.truncate(os.path.getsize(pb) // 3)
  os.remove(os.path.join(lone_model, export.METADATA_FILE))
  cases['truncated saved_model.pb, no export.json'] = (
    os.path.join(lone_model, export.SAVED_MODEL_DIR),
    'not a readable SavedModel',
  )
  bad_json = copy_export(folder, tmp_path / 'bad_json')
  with open(os.path.join(bad_json, export.METADATA_FILE), 'w') as f:
    f.write('{"files": ')
  cases['corrupt export.json'] = (bad_json, 'not a jaxcls export.json')
  empty = tmp_path / 'empty'
  empty.mkdir()
  cases['empty folder'] = (str(empty), 'holds no serving.jax')
  cases['missing'] = (str(tmp_path / 'missing'), 'no such file or folder')
  return cases


def test_damaged_or_wrong_exports_get_one_clear_line(tmp_path, cnn_export):
  _, _, folder, _ = cnn_export
  image = write_pngs(tmp_path, random_images(1))
  for name, (path, message) in wrong_exports(folder, tmp_path).items():
    with pytest.raises(export.ExportError) as e:
      predict.predict_exported(path, image)
    text = str(e.value)
    assert message in text and '\n' not in text, (name, text)


def run_module(module, *args, cwd=REPO):
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=cwd,
  )


def assert_same_listing(got: str, want: str) -> None:
  """predict's printouts agree: same files, classes and ranks; the printed
  percentages within one unit of their last digit (float32 rounding)."""
  got, want = got.splitlines(), want.splitlines()
  assert len(got) == len(want), (got, want)
  for a, b in zip(got, want):
    if a.endswith('%'):
      assert a.rsplit(None, 1)[0] == b.rsplit(None, 1)[0], (got, want)
      assert (
        abs(float(a[a.rindex(' ') : -1]) - float(b[b.rindex(' ') : -1]))
        <= 0.011
      ), (got, want)
    else:
      assert a == b, (got, want)


@pytest.mark.slow  # Four fresh processes, each importing JAX (and TF).
def test_cli_export_then_predict(tmp_path, cnn_export):
  workdir, _, _, _ = cnn_export
  proc = run_module(
    'experiments.export', f'--workdir={workdir}', '--format=jax'
  )
  assert proc.returncode == 0, proc.stderr
  out = os.path.join(workdir, 'export')
  assert sorted(os.listdir(out)) == ['export.json', 'serving.jax']
  assert proc.stdout.splitlines()[0].startswith(f'wrote {out}/serving.jax')
  paths = write_pngs(tmp_path, random_images(2))
  from_export = run_module('experiments.predict', f'--exported={out}', *paths)
  from_checkpoint = run_module(
    'experiments.predict', f'--workdir={workdir}', *paths
  )
  for proc in (from_export, from_checkpoint):
    assert proc.returncode == 0, proc.stderr
  assert_same_listing(from_export.stdout, from_checkpoint.stdout)
  flip_byte(os.path.join(out, export.SERVING_FILE))
  proc = run_module('experiments.predict', f'--exported={out}', *paths)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert 'serving.jax: damaged or replaced' in lines[0]


SNIPPETS = {
  'jax': """
        import jax, numpy as np
        with open('{folder}/serving.jax', 'rb') as f:
          serve = jax.export.deserialize(f.read())
        out = serve.call(np.zeros((5, 28, 28, 1), np.uint8))
        print(out['probabilities'].shape, out['probabilities'].sum(-1))
        """,
  'saved_model': """
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load('{folder}/saved_model')
        serve = model.signatures['serving_default']
        out = serve(images=tf.constant(np.zeros((5, 28, 28, 1), np.uint8)))
        print(out['probabilities'].shape, out['probabilities'].numpy().sum(-1))
        """,
}


@pytest.mark.parametrize(
  'fmt', ['jax', pytest.param('saved_model', marks=pytest.mark.slow)]
)  # TF import
def test_readme_snippets_run_without_jaxcls(tmp_path, cnn_export, fmt):
  _, _, folder, _ = cnn_export
  code = textwrap.dedent(SNIPPETS[fmt]).format(folder=folder)
  code += "import sys; assert 'jaxcls' not in sys.modules\n"
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith('(5, 10)'), proc.stdout


def test_the_tflite_converter_takes_the_saved_model(cnn_export):
  """TFLite is a named target of the SavedModel: it converts, and the
  converted model gives the same probabilities at a new batch size."""
  import tensorflow as tf

  _, _, folder, _ = cnn_export
  converter = tf.lite.TFLiteConverter.from_saved_model(
    os.path.join(folder, export.SAVED_MODEL_DIR)
  )
  interpreter = tf.lite.Interpreter(model_content=converter.convert())
  images = random_images(3, seed=5)
  index = interpreter.get_input_details()[0]['index']
  interpreter.resize_tensor_input(index, images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(index, images)
  interpreter.invoke()
  outputs = [
    interpreter.get_tensor(d['index']) for d in interpreter.get_output_details()
  ]
  expected = run_tf(folder, images)['probabilities']
  assert any(np.abs(o - expected).max() < 1e-5 for o in outputs)


@pytest.mark.parametrize(
  'fmt',
  [
    'jax',
    'saved_model',
    pytest.param(
      'onnx',
      marks=pytest.mark.xfail(
        raises=export.ExportError,
        strict=True,
        reason="jax2onnx 0.12.5 cannot convert flip TTA's jnp.split of a "
        'symbolic batch (one line; --format=all skips model.onnx)',
      ),
    ),
  ],
)
def test_a_flip_tta_run_is_exported_with_flip_tta(tmp_path, fmt):
  # A run validated and tested with flip TTA must be served the same way, or
  # the export's accuracy differs from results.json's.
  workdir, _ = trained_workdir()
  _, state = inspection.load_best(workdir)
  config = config_lib.get_config()
  config.dataset = 'fashion_mnist'
  config.flip_tta = True
  folder = str(tmp_path / 'export')
  meta = export.write(config, state, folder, formats=(fmt,))
  assert meta['flip_tta'] is True
  images = random_images(5)
  out = RUNNERS[fmt](folder, images)
  plain, _ = reference(state, images)
  mirrored, _ = reference(state, images[:, :, ::-1, :].copy())
  want = (plain + mirrored) / 2  # The mean of the two views' probabilities.
  np.testing.assert_allclose(out['probabilities'], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out['probabilities'], plain, atol=1e-4)
  # And the checkpoint's own predictions (report, predict) agree with it.
  probs = inspection.predict_all(state, images, 5, flip_tta=True)
  np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
