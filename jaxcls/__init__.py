"""jaxcls: classic classification networks (CNN, RNN, LSTM, GRU) in JAX.

The pieces, each a small pure function or Flax linen module:

* ``jaxcls.CNN``: the tutorial article's two-convolution CNN;
* ``jaxcls.LSTMCell``, ``GRUCell``, ``SimpleRNNCell``, ``RecurrentClassifier``:
  scanned recurrent cells and a row-by-row image classifier;
* ``jaxcls.accel``: C++ kernels for the CNN block and the LSTM/GRU on a CPU,
  each run only where it measured faster than XLA's ops here
  (``JAXCLS_KERNELS=auto|on|off``), cuDNN's LSTM on a GPU (opt-in), and
  ``jaxcls.accel.jit``, ``jax.jit`` with the options and kernel settings
  jaxcls compiles with;
* ``jaxcls.ResNet``: the small ResNet of He et al. (2016), with BatchNorm;
* ``jaxcls.create_train_state``, ``jaxcls.train_step``, ``jaxcls.eval_step``:
  initialisation and the pure, jittable steps (BatchNorm statistics and an
  EMA of the weights ride in the state);
* ``jaxcls.techniques``: label smoothing, mixup/cutmix, EMA, flip TTA;
* ``jaxcls.create_optimizer``: the optax chain built from a config;
* ``jaxcls.load_data``: TFDS splits into host memory;
* ``jaxcls.check_batch``: the one-line errors for a batch the steps reject;
* ``jaxcls.train_and_evaluate``: the whole run, as ``python -m experiments.*``;
* ``jaxcls.inspection`` (load a trained workdir, predict, summarise) and
  ``jaxcls.metrics`` (the JSON-lines / TensorBoard writer).
"""

# The one place the version is written: pyproject.toml reads this literal
# (setuptools parses it without importing jax).
__version__ = '0.2.0'

from jaxcls import (
  activations,
  fastpath,
  inspection,
  metrics,
  recurrent,  # Registers 'rnn', 'lstm', 'gru' in models.MODELS.
  techniques,
)
from jaxcls.config import get_config
from jaxcls.data import load as load_data
from jaxcls.data import normalize, random_crop_flip
from jaxcls.models import CNN, create_model
from jaxcls.optim import create_optimizer
from jaxcls.recurrent import (
  Bidirectional,
  GRUCell,
  LSTMCell,
  Recurrent,
  RecurrentClassifier,
  RecurrentStack,
  SimpleRNNCell,
)
from jaxcls.resnet import ResNet
from jaxcls.train import (
  TrainState,
  check_batch,
  create_train_state,
  cross_entropy,
  eval_step,
  model_variables,
  params_sha256,
  train_and_evaluate,
  train_step,
)

# The accelerators are optional: without jaxcls/accel/ the library runs on
# XLA's ops (jaxcls.fastpath).
accel = fastpath.accel

__all__ = [
  'accel',
  'activations',
  'inspection',
  'metrics',
  'check_batch',
  'get_config',
  'load_data',
  'normalize',
  'random_crop_flip',
  'CNN',
  'create_model',
  'create_optimizer',
  'TrainState',
  'create_train_state',
  'cross_entropy',
  'eval_step',
  'params_sha256',
  'train_and_evaluate',
  'train_step',
  'recurrent',
  'SimpleRNNCell',
  'LSTMCell',
  'GRUCell',
  'Recurrent',
  'Bidirectional',
  'RecurrentStack',
  'RecurrentClassifier',
  'ResNet',
  'techniques',
  'model_variables',
]
