"""Shared test set-up: quiet TensorFlow, tiny configs, the mock-data switch."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# The kernels wherever they apply, as before measured choices: a test's
# program must not depend on which path measured faster on this machine.
# tests/test_accel.py covers 'auto' and 'off'; the environment may override.
os.environ.setdefault('JAXCLS_KERNELS', 'on')

# One persistent XLA compilation cache for the whole session: the xdist
# workers and every subprocess a test starts (they inherit the environment)
# compile the same tiny programs again and again, and a cache hit returns
# the same executable, so results stay bit for bit. Made by whichever
# process sets it first (the xdist controller), removed when that exits.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='jaxcls_test_xla_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  # Cache every program, not only those that took a second to compile.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import pytest  # noqa: E402

from jaxcls import config as config_lib  # noqa: E402
from jaxcls import data


def tiny_config(**overrides):
  """A fast Fashion-MNIST CNN config; keyword arguments override fields."""
  c = config_lib.get_config()
  c.dataset = 'fashion_mnist'
  c.train_examples = 1024
  c.num_epochs = 1
  c.batch_size = 64
  c.eval_batch_size = 500
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture
def allow_download(monkeypatch):
  """Under tfds.testing.mock_data nothing is downloaded; skip the probe."""
  monkeypatch.setattr(
    data.sources, '_can_reach', lambda host, timeout=3.0: True
  )
