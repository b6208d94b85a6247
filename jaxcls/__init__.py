"""jaxcls: classic classification networks (CNN, RNN, LSTM, GRU) in JAX.

The public API, loaded on first use (``import jaxcls`` itself is cheap):
models (``CNN``, ``ResNet``, ``SimpleRNNCell``, ``LSTMCell``, ``GRUCell``,
``Recurrent``, ``Bidirectional``, ``RecurrentStack``, ``RecurrentClassifier``,
``create_model``); training (``get_config``, ``create_optimizer``,
``create_train_state``, ``train_step``, ``eval_step``, ``cross_entropy``,
``check_batch``, ``model_variables``, ``params_sha256``, ``TrainState``,
``train_and_evaluate``); data (``load_data``, ``normalize``,
``random_crop_flip``); and the modules ``activations``, ``techniques``,
``inspection``, ``metrics``, ``recurrent``, ``accel``.

Subpackages, lowest first: accel, ops, models, data, optim, config, training,
sweep, export, commands. Old module names (``jaxcls.train``) still import,
with a DeprecationWarning naming the new place (``jaxcls.training.run``).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# The one place the version is written: pyproject.toml reads this literal
# (setuptools parses it without importing jax).
__version__ = '0.2.0'

# Public name -> (module, attribute or None for the module itself).
_API = {
  'CNN': ('jaxcls.models.cnn', 'CNN'),
  'ResNet': ('jaxcls.models.resnet', 'ResNet'),
  'SimpleRNNCell': ('jaxcls.models.recurrent', 'SimpleRNNCell'),
  'LSTMCell': ('jaxcls.models.recurrent', 'LSTMCell'),
  'GRUCell': ('jaxcls.models.recurrent', 'GRUCell'),
  'Recurrent': ('jaxcls.models.recurrent', 'Recurrent'),
  'Bidirectional': ('jaxcls.models.recurrent', 'Bidirectional'),
  'RecurrentStack': ('jaxcls.models.recurrent', 'RecurrentStack'),
  'RecurrentClassifier': ('jaxcls.models.recurrent', 'RecurrentClassifier'),
  'create_model': ('jaxcls.models', 'create_model'),
  'get_config': ('jaxcls.config', 'get_config'),
  'create_optimizer': ('jaxcls.optim', 'create_optimizer'),
  'TrainState': ('jaxcls.training.steps', 'TrainState'),
  'create_train_state': ('jaxcls.training.steps', 'create_train_state'),
  'train_step': ('jaxcls.training.steps', 'train_step'),
  'eval_step': ('jaxcls.training.steps', 'eval_step'),
  'cross_entropy': ('jaxcls.training.steps', 'cross_entropy'),
  'check_batch': ('jaxcls.training.steps', 'check_batch'),
  'model_variables': ('jaxcls.training.steps', 'model_variables'),
  'params_sha256': ('jaxcls.training.run', 'params_sha256'),
  'train_and_evaluate': ('jaxcls.training.run', 'train_and_evaluate'),
  'load_data': ('jaxcls.data', 'load'),
  'normalize': ('jaxcls.data', 'normalize'),
  'random_crop_flip': ('jaxcls.data', 'random_crop_flip'),
  'activations': ('jaxcls.ops.activations', None),
  'techniques': ('jaxcls.ops.techniques', None),
  'inspection': ('jaxcls.training.inspection', None),
  'metrics': ('jaxcls.training.metrics', None),
  'recurrent': ('jaxcls.models.recurrent', None),
  'accel': ('jaxcls.ops.fastpath', 'accel'),
}

# Modules from before the subpackages: old name -> where it lives now.
_MOVED = {
  'activations': 'ops.activations',
  'kernels': 'ops.kernels',
  'fastpath': 'ops.fastpath',
  'techniques': 'ops.techniques',
  'resnet': 'models.resnet',
  'recurrent': 'models.recurrent',
  'local_data': 'data.local_files',
  'image_folder': 'data.image_folder',
  'checkpoint': 'training.checkpoint',
  'workdir': 'training.workdir',
  'guards': 'training.guards',
  'metrics': 'training.metrics',
  'epochs': 'training.epochs',
  'profiling': 'training.profiling',
  'feed': 'training.feed',
  'parallel': 'training.parallel',
  'steps': 'training.steps',
  'train': 'training.run',
  'inspection': 'training.inspection',
  'scores': 'training.scores',
  'population': 'sweep.population',
  'export_onnx': 'export.onnx',
  'cli': 'commands.cli',
  'entry_points': 'commands.entry_points',
}


_SUBPACKAGES = ('ops', 'models', 'data', 'optim', 'config', 'training')
_SUBPACKAGES += ('sweep', 'export', 'commands')


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """``import jaxcls.train`` gives ``jaxcls.training.run``, with a warning."""

  def find_spec(self, fullname, path=None, target=None):
    old = fullname.removeprefix(__name__ + '.')
    if old in _MOVED and fullname != old:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    old = spec.name.removeprefix(__name__ + '.')
    warnings.warn(
      f'{spec.name} moved to jaxcls.{_MOVED[old]}; import it from there',
      DeprecationWarning,
      stacklevel=3,
    )
    return importlib.import_module(f'{__name__}.{_MOVED[old]}')

  def exec_module(self, module):
    pass  # the target module ran when it was imported


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
  sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
  if name in _API:
    module, attribute = _API[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
  elif name in _SUBPACKAGES or name in _MOVED:
    value = importlib.import_module(f'{__name__}.{name}')
  else:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_API))


__all__ = sorted(_API)
