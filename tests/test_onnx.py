"""model.onnx (jax2onnx) runs on onnxruntime alone and gives serving.jax's
outputs; a model that cannot be converted costs one line, not the export."""

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

from experiments import predict
from jaxcls import config as config_lib
from jaxcls import export, models
from jaxcls.ops import fastpath
from jaxcls.training import steps
from test_export import (
  IMAGE_SHAPE,
  REPO,
  flip_byte,
  random_images,
  run_jax,
  write_pngs,
)
from trained_workdir import trained_workdir

jax2onnx = pytest.importorskip('jax2onnx')
pytest.importorskip('onnxruntime')

# Runs model.onnx with onnxruntime and numpy alone: no jax, no jaxcls.
ONNX_ONLY = """
import sys
import numpy as np
import onnxruntime as ort

folder, out = sys.argv[1:]
session = ort.InferenceSession(
  f'{folder}/model.onnx', providers=['CPUExecutionProvider']
)
results = {}
for name in ('one', 'many'):
  images = np.load(f'{out}/{name}.npy')
  probs, logits = session.run(
    ['probabilities', 'logits'], {'images': images}
  )
  results[f'{name}_probabilities'], results[f'{name}_logits'] = probs, logits
np.savez(f'{out}/onnx.npz', **results)
assert 'jax' not in sys.modules and 'jaxcls' not in sys.modules
print('ok')
"""


def jittered(state, scale: float, seed: int = 0):
  """``state`` with noise on every parameter (an initialised model's outputs
  can be nearly the same for every image, which would prove nothing).
  In numpy: a jax op per leaf would compile a program per leaf."""
  rng = np.random.default_rng(seed)
  noisy = lambda p: p + scale * rng.standard_normal(p.shape, np.float32)
  return state.replace(params=jax.tree.map(noisy, jax.device_get(state.params)))


def far_from_init(batch_stats, seed: int = 1):
  """BatchNorm running statistics unlike init's (means 0, variances 1)."""
  rng = np.random.default_rng(seed)
  paths, tree = jax.tree_util.tree_flatten_with_path(
    jax.device_get(batch_stats)
  )
  leaves = [
    leaf + 0.3 * rng.standard_normal(leaf.shape, np.float32)
    if 'mean' in jax.tree_util.keystr(path)
    else leaf * rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    for path, leaf in paths
  ]
  return jax.tree.unflatten(tree, leaves)


def tiny_model(kind: str):
  """``(config, state)``: an initialised tiny model of ``kind``; its init is
  jitted (steps.create_train_state's eager init compiles op by op)."""
  config = config_lib.get_config()
  config.dataset = 'fashion_mnist'
  config.model = kind
  config.hidden_size = 16
  config.resnet_depth = 8
  model = models.create_model(config, 10)
  with fastpath.disabled():  # As create_train_state: the same parameters.
    variables = jax.jit(model.init)(
      jax.random.key(3), jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    )
  state = steps.TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    tx=optax.sgd(0.1),
    batch_stats=variables.get('batch_stats'),
  )
  if kind == 'resnet':  # Running statistics unlike init's must be used.
    stats = far_from_init(state.batch_stats)
    state = jittered(state.replace(batch_stats=stats), 0.05)
  return config, state


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  """``kind -> (folder, meta)``: serving.jax and model.onnx, made once."""
  made = {}

  def get(kind: str):
    if kind not in made:
      config, state = tiny_model(kind)
      folder = str(tmp_path_factory.mktemp(kind) / 'export')
      made[kind] = folder, export.write(config, state, folder, ('jax', 'onnx'))
    return made[kind]

  return get


def run_onnx_alone(folder: str, tmp_path, batches) -> dict:
  """model.onnx's outputs for ``batches``, from a process without jax."""
  for name, images in batches.items():
    np.save(tmp_path / f'{name}.npy', images)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run(
    [sys.executable, '-c', ONNX_ONLY, folder, str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=tmp_path,
    env=env,
  )
  assert proc.returncode == 0 and proc.stdout == 'ok\n', proc.stderr
  return dict(np.load(tmp_path / 'onnx.npz'))


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
@pytest.mark.parametrize(
  'kind',
  [
    'cnn',
    'gru',
    pytest.param('resnet', marks=pytest.mark.slow),
    pytest.param('lstm', marks=pytest.mark.slow),
  ],
)
def test_onnx_gives_serving_jax_outputs_without_jax(tmp_path, exports, kind):
  folder, meta = exports(kind)
  assert 'skipped' not in meta and meta['files']['onnx']['opset'] == 21
  images = random_images(7, seed=1)
  images[0], images[1] = 0, 255  # black, white, noise
  batches = {'one': random_images(1, seed=2), 'many': images}
  got = run_onnx_alone(folder, tmp_path, batches)
  for name, batch in batches.items():
    want = run_jax(folder, batch)
    probs = got[f'{name}_probabilities']
    assert probs.dtype == np.float32 and probs.shape == (len(batch), 10)
    np.testing.assert_array_equal(
      probs.argmax(-1), want['probabilities'].argmax(-1)
    )
    np.testing.assert_allclose(probs, want['probabilities'], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
      got[f'{name}_logits'], want['logits'], rtol=1e-5, atol=1e-5
    )
  # Not a constant function: the images get different probabilities.
  assert np.ptp(got['many_probabilities'], axis=0).max() > 1e-3


def test_export_json_records_model_onnx(exports):
  folder, meta = exports('cnn')
  with open(os.path.join(folder, export.METADATA_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(meta))
  entry = meta['files']['onnx']
  path = os.path.join(folder, export.ONNX_FILE)
  assert entry['sha256'] == export.common.sha256(path)
  for package in ('jax2onnx', 'onnx', 'onnxruntime'):
    assert meta['versions'][package] != 'unknown'


def test_predict_from_model_onnx(tmp_path, exports):
  folder, _ = exports('cnn')
  paths = write_pngs(tmp_path, random_images(3, seed=4))
  onnx_path = os.path.join(folder, export.ONNX_FILE)
  assert export.load(onnx_path).format == 'onnx'
  only_onnx = shutil.copytree(folder, str(tmp_path / 'only_onnx'))
  os.remove(os.path.join(only_onnx, export.SERVING_FILE))
  assert export.load(only_onnx).format == 'onnx'  # The folder, no serving.jax
  want = predict.predict_exported(folder, paths, k=10)  # serving.jax
  for path in (onnx_path, only_onnx):
    got = predict.predict_exported(path, paths, k=10)
    for have, expected in zip(got, want):
      assert [n for n, _ in have] == [n for n, _ in expected]
      np.testing.assert_allclose(
        [p for _, p in have], [p for _, p in expected], rtol=0, atol=1e-5
      )


def test_damaged_or_foreign_onnx_gets_one_line(tmp_path, exports):
  folder, _ = exports('cnn')
  damaged = shutil.copytree(folder, str(tmp_path / 'damaged'))
  flip_byte(os.path.join(damaged, export.ONNX_FILE))
  truncated = tmp_path / 'truncated.onnx'
  with open(os.path.join(folder, export.ONNX_FILE), 'rb') as f:
    truncated.write_bytes(f.read()[:1000])
  foreign = tmp_path / 'foreign.onnx'  # A valid ONNX model of another kind.
  foreign.write_bytes(export_onnx_of(lambda x: x * 2, np.float32))
  cases = {
    os.path.join(damaged, export.ONNX_FILE): 'damaged or replaced',
    str(truncated): 'not a readable ONNX model',
    str(foreign): 'not a jaxcls serving export',
  }
  for path, message in cases.items():
    with pytest.raises(export.ExportError) as e:
      export.load(path)
    assert message in str(e.value) and '\n' not in str(e.value), str(e.value)


def export_onnx_of(fn, dtype) -> bytes:
  return jax2onnx.to_onnx(
    fn, [jax.ShapeDtypeStruct(('b', 3), dtype)]
  ).SerializeToString()


def cannot_convert(*args, **kwargs):
  raise NotImplementedError('no ONNX rule for primitive frobnicate\nmore')


def test_a_model_that_cannot_convert_skips_onnx_only(tmp_path, monkeypatch):
  monkeypatch.setattr(jax2onnx, 'to_onnx', cannot_convert)
  config, state = tiny_model('gru')
  folder = tmp_path / 'export'
  meta = export.write(config, state, str(folder), ('jax', 'onnx'))
  reason = meta['skipped']['onnx']
  assert 'cannot convert the gru model' in reason and '\n' not in reason
  assert 'primitive frobnicate' in reason and 'more' not in reason
  assert sorted(os.listdir(folder)) == ['export.json', 'serving.jax']
  assert 'onnx' not in meta['files']
  out = run_jax(str(folder), random_images(2))
  assert out['probabilities'].shape == (2, 10)
  # ONNX alone: one line, and the export already there stays as it was.
  with pytest.raises(export.ExportError) as e:
    export.write(config, state, str(folder), ('onnx',))
  assert 'cannot convert' in str(e.value) and '\n' not in str(e.value)
  assert sorted(os.listdir(folder)) == ['export.json', 'serving.jax']
  assert not [p for p in os.listdir(tmp_path) if p != 'export']  # no tmp


# The export command with the converter made to fail, as for a model that
# jax2onnx cannot convert.
FAILING_EXPORT = """
import runpy, sys
import jax2onnx

def cannot_convert(*args, **kwargs):
  raise NotImplementedError('no ONNX rule for primitive frobnicate')

jax2onnx.to_onnx = cannot_convert
sys.argv[0] = 'export'
runpy.run_module('experiments.export', run_name='__main__', alter_sys=True)
"""


def run_export(*args, code=None):
  command = ['-c', code] if code else ['-m', 'experiments.export']
  return subprocess.run(
    [sys.executable, *command, *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )


@pytest.mark.slow  # Trains the shared run; four processes import JAX.
def test_cli_onnx_export_and_its_failure(tmp_path):
  workdir, _ = trained_workdir()
  out = os.path.join(workdir, 'export')
  proc = run_export(f'--workdir={workdir}', '--format=onnx')  # Works.
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(out)) == ['export.json', 'model.onnx']
  assert proc.stdout.startswith(f'wrote {out}/model.onnx (onnx: uint8')
  image = write_pngs(tmp_path, random_images(2))
  from_onnx = subprocess.run(
    [sys.executable, '-m', 'experiments.predict', f'--exported={out}', *image],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert from_onnx.returncode == 0, from_onnx.stderr
  assert from_onnx.stdout.startswith(image[0])
  workdir_flag = f'--workdir={workdir}'
  proc = run_export(workdir_flag, '--format=onnx', code=FAILING_EXPORT)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: model.onnx: ')
  assert 'cannot convert' in lines[0] and 'frobnicate' in lines[0]
  assert sorted(os.listdir(out)) == ['export.json', 'model.onnx']  # kept
  proc = run_export(workdir_flag, '--format=all', code=FAILING_EXPORT)
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr
  warnings = [w for w in proc.stderr.splitlines() if w.startswith('warning:')]
  assert len(warnings) == 1 and 'frobnicate' in warnings[0], proc.stderr
  assert sorted(os.listdir(out)) == [
    'export.json',
    'saved_model',
    'serving.jax',
  ]
