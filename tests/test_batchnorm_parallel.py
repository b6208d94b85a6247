"""BatchNorm statistics on 8 CPU devices: pmap with an axis name, and jit with
the batch sharded over a mesh, against one device with the whole batch.

What holds (measured here):

* under ``jax.pmap`` each device sees only its own rows; with
  ``axis_name`` BatchNorm ``pmean``-s its statistics, so the running averages
  (and outputs, and gradients) equal the full-batch ones; without it they
  are per-device statistics of 1/8 of the batch;
* under ``jax.jit`` with the batch sharded over a ``Mesh``, the model is
  written for the global batch and XLA inserts the all-reduce: the
  statistics are global over the batch with no axis name at all.

The 8 devices need ``XLA_FLAGS`` before JAX starts, so the computation runs
in a subprocess (this file run as a script) that saves its arrays for the
assertions here.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # 8 devices in a subprocess: the full tier.

DEVICES = 8
BATCH = 32  # 4 rows per device


def _flat(tree, prefix=''):
  """{'a/b/c': array} for saving a pytree to npz."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}/'))
    return out
  return {prefix[:-1]: np.asarray(tree)}


def _compute(path):
  """Runs on 8 devices; saves stats, logits and gradients of each mode."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from jaxcls.models import resnet
  from jaxcls.training import parallel

  assert jax.device_count() == DEVICES, jax.devices()
  images = jax.random.normal(jax.random.key(0), (BATCH, 16, 16, 1)) * 2 + 1
  labels = jax.random.randint(jax.random.key(1), (BATCH,), 0, 10)
  make = functools.partial(resnet.ResNet, depth=8, width=0.5)
  variables = make().init(jax.random.key(2), images[:1])

  def step(model, variables, images, labels, axis_name=None):
    def loss_fn(params):
      logits, updated = model.apply(
        {**variables, 'params': params},
        images,
        train=True,
        mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), (logits, updated['batch_stats'])

    grads, (logits, stats) = jax.grad(loss_fn, has_aux=True)(
      variables['params']
    )
    if axis_name:
      grads = jax.lax.pmean(grads, axis_name)
    return stats, logits, grads

  results = {}

  def save(name, stats, logits, grads):
    results.update(_flat({name: {'stats': stats, 'grads': grads}}))
    results[f'{name}/logits'] = np.asarray(logits).reshape(BATCH, -1)

  # One device, the whole batch: the reference.
  save(
    'one', *jax.jit(functools.partial(step, make()))(variables, images, labels)
  )
  # pmap, 4 rows per device, with and without the axis name.
  split = lambda x: x.reshape(DEVICES, BATCH // DEVICES, *x.shape[1:])
  for name, axis in (('pmap_axis', 'batch'), ('pmap_local', None)):
    fn = jax.pmap(
      functools.partial(step, make(axis_name=axis), axis_name='batch'),
      axis_name='batch',
      in_axes=(None, 0, 0),
    )
    stats, logits, grads = fn(variables, split(images), split(labels))
    results.update(_flat({name: {'stats_per_device': stats}}))
    save(
      name,
      jax.tree.map(lambda x: x[0], stats),
      logits,
      jax.tree.map(lambda x: x[0], grads),
    )
  # jit, the batch sharded over a mesh of 8, the model without axis name.
  mesh = parallel.make_mesh()
  sharded = NamedSharding(mesh, P(parallel.DATA_AXIS))
  images_s, labels_s = jax.device_put((images, labels), sharded)
  assert len(images_s.addressable_shards) == DEVICES
  variables_r = jax.device_put(variables, NamedSharding(mesh, P()))
  save(
    'jit_sharded',
    *jax.jit(functools.partial(step, make()))(variables_r, images_s, labels_s),
  )
  np.savez(path, **results)


def _run(tmp_path):
  path = os.path.join(tmp_path, 'bn.npz')
  env = {
    **os.environ,
    'TF_CPP_MIN_LOG_LEVEL': '3',
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={DEVICES}',
    'JAX_PLATFORMS': 'cpu',
  }
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), path],
    env=env,
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _group(results, name, kind):
  prefix = f'{name}/{kind}/'
  return {
    k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)
  }


def assert_tree_close(a, b, rtol=1e-4, atol=1e-5):
  assert a.keys() == b.keys() and a
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def test_pmap_and_sharded_jit_batchnorm_against_one_device(tmp_path):
  results = _run(tmp_path)
  one = {kind: _group(results, 'one', kind) for kind in ('stats', 'grads')}

  # pmap with axis_name: every device holds the full-batch statistics, the
  # outputs and the (pmean-ed) gradients are those of one device.
  per_device = _group(results, 'pmap_axis', 'stats_per_device')
  for k, v in per_device.items():
    np.testing.assert_allclose(
      v, np.broadcast_to(v[:1], v.shape), rtol=1e-6, atol=1e-7, err_msg=k
    )
  # A gradient is a sum over the batch with cancellation (a BN bias's is a
  # few 1e-3 from terms near 1e-1), and devices sum in another order: on an
  # AMD EPYC one entry differed by 2.8e-5. Statistics stay at 1e-5.
  assert_tree_close(_group(results, 'pmap_axis', 'stats'), one['stats'])
  assert_tree_close(
    _group(results, 'pmap_axis', 'grads'), one['grads'], atol=1e-4
  )
  np.testing.assert_allclose(
    results['pmap_axis/logits'], results['one/logits'], rtol=1e-4, atol=1e-5
  )

  # jit over a sharded batch: global statistics with no axis name.
  assert_tree_close(_group(results, 'jit_sharded', 'stats'), one['stats'])
  assert_tree_close(
    _group(results, 'jit_sharded', 'grads'), one['grads'], atol=1e-4
  )
  np.testing.assert_allclose(
    results['jit_sharded/logits'], results['one/logits'], rtol=1e-4, atol=1e-5
  )

  # pmap without axis_name: per-device statistics, which differ from each
  # other and from the full batch (so the checks above can fail).
  local = _group(results, 'pmap_local', 'stats_per_device')
  mean = local['bn_init/mean']
  assert not np.allclose(mean[0], mean[1], rtol=1e-3)
  assert not np.allclose(mean[0], one['stats']['bn_init/mean'], rtol=1e-3)
  # Their average over devices is the full-batch mean, though (equal rows
  # per device): the first BatchNorm's input does not depend on the others.
  np.testing.assert_allclose(
    mean.mean(0), one['stats']['bn_init/mean'], rtol=1e-4, atol=1e-6
  )


if __name__ == '__main__':
  sys.path.insert(0, os.getcwd())
  _compute(sys.argv[1])
