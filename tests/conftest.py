"""Shared test set-up: quiet TensorFlow, tiny configs, the mock-data switch."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest  # noqa: E402

from jaxcls import config as config_lib  # noqa: E402
from jaxcls import data  # noqa: E402


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
  monkeypatch.setattr(data, '_can_reach', lambda host, timeout=3.0: True)
