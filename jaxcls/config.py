"""The base config every experiment starts from, and its validation.

Experiments copy :func:`get_config` and change a few fields. Every field can be
overridden on the command line, e.g. ``--config.num_epochs=3``.
"""

import hashlib
import json

import ml_collections

from jaxcls import activations, data, models, optim

# Fields that do not change what is trained; two runs that differ only in
# these may share a workdir (resume, evaluation).
RUN_ONLY_FIELDS = ('num_epochs', 'data_dir', 'eval_batch_size',
                   'checkpoint_every_steps', 'log_every_steps', 'parallel',
                   'distributed', 'patience')


def get_config() -> ml_collections.ConfigDict:
  """Defaults follow the article: the two-conv CNN, Adam, batch 64."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = 'mnist'
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # A folder of source files (TFDS's manual_dir, '~' expanded): MNIST,
  # Fashion-MNIST or CIFAR-10 files (jaxcls/local_data.py), or for dataset
  # 'image_folder' its class folders (jaxcls/image_folder.py).
  c.manual_dir = ml_collections.FieldReference(None, field_type=str)
  c.image_size = 0  # image_folder: square side to resize to; 0: from data
  c.channels = 0  # image_folder: 1 (grayscale) or 3 (RGB); 0: from data
  c.validation_percent = 10  # the last 10% of TFDS's train split
  c.train_examples = -1  # cap on training examples for quick runs; -1: all
  # Model.
  c.model = 'cnn'
  c.activation = 'relu'
  c.pooling = 'max'
  c.dropout_rate = 0.0
  c.compute_dtype = 'float32'  # or 'bfloat16'
  # Optimizer.
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.b1 = 0.9
  c.b2 = 0.999
  c.momentum = 0.9
  c.weight_decay = 1e-4  # decoupled, adamw only; biases are never decayed
  c.grad_clip_norm = 0.0  # 0: no clipping
  c.lr_schedule = 'constant'  # or 'warmup_cosine'
  c.warmup_epochs = 1.0
  c.l1 = 0.0  # the article's L1 penalty, a loss term
  c.l2 = 0.0  # the article's L2 penalty, a loss term
  # Training.
  c.num_epochs = 10
  c.batch_size = 64  # global batch, over all devices
  c.eval_batch_size = 1000
  c.seed = 0
  c.checkpoint_every_steps = 0  # 0: at the end of each epoch only
  c.log_every_steps = 100
  c.parallel = 'jit'  # 'jit' (NamedSharding over all devices) or 'pmap'
  c.patience = 0  # early stop after this many epochs without a better val
  c.nonfinite_policy = 'stop'  # or 'skip': drop NaN/inf steps, up to...
  c.max_nonfinite_steps = 10  # ...this many in a row
  # Multi-host: each process reads its own shards of the training split.
  # 0 means one shard per process; set it to the process count of a
  # multi-process run to reproduce that run's batches in one process.
  c.num_data_shards = 0
  c.distributed = False  # also turned on by $JAX_COORDINATOR_ADDRESS
  return c


def fingerprint(config) -> str:
  """A hash of the fields that define what is trained (not RUN_ONLY_FIELDS)."""
  items = {k: v for k, v in config.to_dict().items()
           if k not in RUN_ONLY_FIELDS}
  return hashlib.sha256(
      json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _validate_image_folder(config) -> None:
  """The fields of dataset 'image_folder' (absent fields default)."""
  is_folder = config.dataset == data.IMAGE_FOLDER
  if is_folder and not config.get('manual_dir'):
    raise ValueError("dataset 'image_folder' needs --config.manual_dir=PATH, "
                     'a folder with one subfolder of images per class')
  if config.get('channels', 0) not in (0, 1, 3):
    raise ValueError(f'channels must be 1, 3 or 0 (from the data), got '
                     f'{config.channels!r}')
  if config.get('image_size', 0) < 0 or 0 < config.get('image_size', 0) < 4:
    raise ValueError(f'image_size must be >= 4 or 0 (from the data), got '
                     f'{config.image_size!r}')
  if not is_folder and (config.get('image_size', 0) or
                        config.get('channels', 0)):
    raise ValueError(f'image_size and channels apply to dataset '
                     f"'image_folder' only; {config.dataset} images are "
                     f'{data.get_spec(config.dataset).image_shape}')


def validate(config) -> None:
  """Raises ValueError with one clear line for the first invalid value."""
  data.check_dataset_name(config.dataset)
  _validate_image_folder(config)
  if config.model not in models.MODELS:
    raise ValueError(f'unknown model {config.model!r}; '
                     f'choose one of {sorted(models.MODELS)}')
  if config.optimizer not in optim.OPTIMIZERS:
    raise ValueError(f'unknown optimizer {config.optimizer!r}; '
                     f'choose one of {list(optim.OPTIMIZERS)}')
  if config.lr_schedule not in optim.SCHEDULES:
    raise ValueError(f'unknown lr_schedule {config.lr_schedule!r}; '
                     f'choose one of {list(optim.SCHEDULES)}')
  if config.get('activation', 'relu') not in activations.ACTIVATIONS:
    raise ValueError(f'unknown activation {config.activation!r}; '
                     f'choose one of {sorted(activations.ACTIVATIONS)}')
  if config.get('pooling', 'max') not in ('max', 'avg'):
    raise ValueError(f"unknown pooling {config.pooling!r}; choose 'max' or 'avg'")
  if config.parallel not in ('jit', 'pmap'):
    raise ValueError(f"unknown parallel {config.parallel!r}; "
                     "choose 'jit' or 'pmap'")
  if config.get('nonfinite_policy', 'stop') not in ('stop', 'skip'):
    raise ValueError(f'unknown nonfinite_policy {config.nonfinite_policy!r}; '
                     "choose 'stop' or 'skip'")
  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise ValueError(f'unknown compute_dtype {config.compute_dtype!r}; '
                     "choose 'float32' or 'bfloat16'")
  positive = ('learning_rate', 'batch_size', 'eval_batch_size', 'num_epochs')
  for name in positive:
    if not config[name] > 0:
      raise ValueError(f'{name} must be > 0, got {config[name]!r}; '
                       f'set --config.{name}=...')
  if not 0 < config.validation_percent < 100:
    raise ValueError('validation_percent must be in 1..99, got '
                     f'{config.validation_percent!r}')
  if not 0 <= config.dropout_rate < 1:
    raise ValueError(f'dropout_rate must be in [0, 1), got {config.dropout_rate!r}')
  for name in ('weight_decay', 'grad_clip_norm', 'l1', 'l2', 'warmup_epochs',
               'checkpoint_every_steps', 'patience', 'num_data_shards',
               'max_nonfinite_steps'):
    if config.get(name, 0) < 0:
      raise ValueError(f'{name} must be >= 0, got {config[name]!r}')
  # Recurrent models (experiments/sequential_mnist.py); absent fields default.
  for name in ('hidden_size', 'num_layers'):
    if not config.get(name, 1) > 0:
      raise ValueError(f'{name} must be > 0, got {config[name]!r}; '
                       f'set --config.{name}=...')
  if config.get('readout', 'last') not in ('last', 'mean'):
    raise ValueError(f"unknown readout {config.readout!r}; choose 'last' or "
                     "'mean'")
  if config.get('forget_bias', 0.0) < 0:
    raise ValueError(f'forget_bias must be >= 0 (usually 0 or 1), got '
                     f'{config.forget_bias!r}')
