"""Runs one tiny training job and saves its final parameters (test helper).

  python tests/run_tiny.py WORKDIR [--config.x=v ...]

Used by the multi-device, multi-process and fault tests, which run it in
subprocesses (XLA_FLAGS, jax.distributed and signals need a fresh process).
Writes WORKDIR/params.npz (process 0) from the latest checkpoint.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from conftest import tiny_config  # noqa: E402
from jaxcls import config as config_lib
from jaxcls import data, models, optim
from jaxcls.training import checkpoint
from jaxcls.training import run as train

config_flags.DEFINE_config_dict('config', tiny_config())


def final_params(config, workdir):
  spec = data.get_spec(config.dataset)
  model = models.create_model(config, spec.num_classes)
  state = train.create_train_state(
    jax.random.key(0),
    model,
    optim.create_optimizer(config, 1),
    spec.image_shape,
    ema=config.ema_decay > 0,
  )
  manager = checkpoint.make_manager(workdir, 'latest')
  state, _ = checkpoint.restore(manager, state, config_lib.fingerprint(config))
  return train._to_host(state.params)


def signal_self_during(moment: str, nth: int) -> None:
  """Sends this process SIGTERM from inside its ``nth`` validation
  (``moment='validation'``) or checkpoint save (``'save'``), so a test hits
  that moment exactly ($JAXCLS_TEST_SIGTERM=moment:process:nth)."""
  import signal

  owner, name = {
    'validation': (train.Run, 'score'),
    'save': (checkpoint, 'save'),
  }[moment]
  original, calls = getattr(owner, name), [0]

  def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

  setattr(owner, name, wrapped)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if os.environ.get('JAXCLS_TEST_SIGTERM'):
    moment, process, nth = os.environ['JAXCLS_TEST_SIGTERM'].split(':')
    if process == os.environ.get('JAX_PROCESS_ID'):  # Before JAX starts.
      signal_self_during(moment, int(nth))
  workdir = argv[1]
  config = flags.FLAGS.config
  results = train.train_and_evaluate(config, workdir)
  params = final_params(config, workdir)  # collective: every process
  if jax.process_index() == 0:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    np.savez(
      os.path.join(workdir, 'params.npz'),
      **{jax.tree_util.keystr(k): v for k, v in flat},
    )
    print('RESULT', results['params_sha256'], results['test_accuracy'])


if __name__ == '__main__':
  app.run(main)
