"""The base config every experiment starts from, and its validation.

Experiments copy :func:`get_config` and change a few fields. Every field can be
overridden on the command line, e.g. ``--config.num_epochs=3``.
"""

import hashlib
import json
import math

import ml_collections

from jaxcls import data, models, optim
from jaxcls.ops import activations

# Fields that do not change what is trained; two runs that differ only in
# these may share a workdir (resume, evaluation).
RUN_ONLY_FIELDS = (
  'num_epochs',
  'data_dir',
  'eval_batch_size',
  'checkpoint_every_steps',
  'log_every_steps',
  'parallel',
  'distributed',
  'patience',
  'steps_per_call',
  'device_data',
  'profile_steps',
)


def _data_fields(c: ml_collections.ConfigDict) -> None:
  """The dataset, where its files are read from, and how much of it."""
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
  # Sequences (jaxcls/data/sequences.py): 'spam_assassin', 'text_folder'
  # and UCR/UEA problems as 'ucr/<Name>'; model 'sequence' reads them.
  c.max_len = 0  # steps kept; 0: 256 words, 1024 bytes, the longest series
  c.tokenizer = 'words'  # texts: 'words' (a vocabulary of train) or 'bytes'
  c.vocab_size = 20_000  # word ids, PAD and UNK included
  c.num_buckets = 4  # padded lengths of training batches (jit programs)
  c.email_headers = True  # False: emails keep only their Subject and body


def _model_fields(c: ml_collections.ConfigDict) -> None:
  """The model: the CNN's options, the recurrent models' and the ResNet's."""
  c.model = 'cnn'
  c.activation = 'relu'
  c.pooling = 'max'
  c.dropout_rate = 0.0
  c.compute_dtype = 'float32'  # or 'bfloat16'
  # Recurrent models ('rnn', 'lstm', 'gru'; experiments/sequential_mnist.py).
  c.hidden_size = 128
  c.num_layers = 1
  c.bidirectional = False  # forward and backward outputs concatenated
  c.readout = 'last'  # 'last' hidden state or 'mean' over time feeds the head
  c.forget_bias = 1.0  # LSTM forget-gate bias at init (Keras unit_forget_bias)
  # Model 'sequence' (jaxcls/models/sequence.py) also reads these two, and
  # hidden_size, num_layers, bidirectional, readout ('last', 'mean', 'max').
  c.cell = 'lstm'  # 'lstm', 'gru' or 'rnn'
  c.embed_size = 64  # token embedding, or a series' input projection (0: none)
  # BatchNorm and the small ResNet (jaxcls/resnet.py, He et al. 2016).
  c.batchnorm = False  # the CNN: BatchNorm after each convolution
  c.resnet_depth = 20  # 6n + 2: 20, 32, 44, 56, 110
  c.resnet_width = 1.0  # multiplies the 16/32/64 channels of the stages
  c.resnet_shortcut = 'pad'  # option A ('pad') or B ('projection')
  c.resnet_zero_init_residual = False  # last BN scale of each block at 0
  c.resnet_stem_pool = False  # 2x2 max pool after the stem (stages at 1/2 size)


def _regulariser_fields(c: ml_collections.ConfigDict) -> None:
  """Regularisers (jaxcls/techniques.py); every one is off at its default."""
  c.augment = 'auto'  # auto (the dataset's), none, flip, crop_flip
  c.crop_padding = 4  # crop_flip: zero padding before the random crop
  c.label_smoothing = 0.0  # Szegedy et al. 2016
  c.mixup_alpha = 0.0  # Zhang et al. 2018; 0: off
  c.cutmix_alpha = 0.0  # Yun et al. 2019; 0: off (both on: timm's switch)
  c.ema_decay = 0.0  # EMA of the weights, validated beside them; 0: off
  c.flip_tta = False  # evaluation: average each image and its mirror image


def _optimizer_fields(c: ml_collections.ConfigDict) -> None:
  """The optimizer, its learning-rate schedule and the article's penalties."""
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.b1 = 0.9
  c.b2 = 0.999
  c.momentum = 0.9
  c.weight_decay = 1e-4  # adamw and nesterov only; never biases or BN scales
  c.grad_clip_norm = 0.0  # 0: no clipping
  c.lr_schedule = 'constant'  # or 'warmup_cosine'
  c.warmup_epochs = 1.0
  c.l1 = 0.0  # the article's L1 penalty, a loss term
  c.l2 = 0.0  # the article's L2 penalty, a loss term


def _training_fields(c: ml_collections.ConfigDict) -> None:
  """The loop: its length, batches, seed, checkpoints, logs and guards."""
  c.num_epochs = 10
  c.batch_size = 64  # global batch, over all devices
  c.eval_batch_size = 1000
  c.seed = 0
  c.checkpoint_every_steps = 0  # 0: at the end of each epoch only
  c.log_every_steps = 100
  c.parallel = 'jit'  # 'jit' (NamedSharding over all devices) or 'pmap'
  c.patience = 0  # early stop after this many epochs without a better val
  c.best_by = 'accuracy'  # the best epoch: highest val accuracy, or 'loss'
  c.nonfinite_policy = 'stop'  # or 'skip': drop NaN/inf steps, up to...
  c.max_nonfinite_steps = 10  # ...this many in a row


def _feeding_fields(c: ml_collections.ConfigDict) -> None:
  """Feeding, accumulation, profiling and the processes of a run."""
  # Feeding (jaxcls/feed.py); neither changes what is trained.
  c.device_data = 'auto'  # training split kept on the device: auto, on, off
  c.steps_per_call = 0  # train steps per compiled call; 0: per backend
  # Gradient accumulation: one optimizer step per this many batches (an
  # effective batch of accumulate_steps x batch_size; optax.MultiSteps).
  c.accumulate_steps = 1
  # 'START:END': a jax.profiler trace of those steps in workdir/profile.
  c.profile_steps = ''
  # Multi-host: each process reads its own shards of the training split.
  # 0 means one shard per process; set it to the process count of a
  # multi-process run to reproduce that run's batches in one process.
  c.num_data_shards = 0
  c.distributed = False  # also turned on by $JAX_COORDINATOR_ADDRESS


# The sections of get_config, in the order of its fields.
_SECTIONS = (
  _data_fields,
  _model_fields,
  _regulariser_fields,
  _optimizer_fields,
  _training_fields,
  _feeding_fields,
)


def get_config() -> ml_collections.ConfigDict:
  """Defaults follow the article: the two-conv CNN, Adam, batch 64.

  Each section of fields is filled by its own helper (``_data_fields``,
  ``_model_fields``, ...), in order; the comments there document the fields.
  """
  c = ml_collections.ConfigDict()
  for fill in _SECTIONS:
    fill(c)
  return c


def fingerprint(config, keys=None) -> str:
  """A hash of the fields that define what is trained (not RUN_ONLY_FIELDS).

  ``keys`` limits it to those fields (see :func:`matches`).
  """
  items = {
    k: v
    for k, v in config.to_dict().items()
    if k not in RUN_ONLY_FIELDS and (keys is None or k in keys)
  }
  return hashlib.sha256(
    json.dumps(items, sort_keys=True, default=str).encode()
  ).hexdigest()[:16]


def differences(config, stored: str | None) -> list[tuple[str, object, object]]:
  """What makes ``config`` train something else than the saved config.

  Args:
    config: the config of this run.
    stored: the saved config's JSON (a checkpoint's ``meta['config']``).

  Returns:
    ``(field, saved, now)`` for each differing field that defines what is
    trained (not RUN_ONLY_FIELDS); fields the saved config lacks compare
    against their defaults. Empty when ``stored`` is missing or unreadable.
  """
  try:
    saved = from_stored(stored) if stored else None
  except (ValueError, TypeError, KeyError, AttributeError):
    return []
  if saved is None:
    return []
  now, then = config.to_dict(), saved.to_dict()
  return [
    (k, then.get(k), now[k])
    for k in sorted(now)
    if k not in RUN_ONLY_FIELDS and then.get(k) != now[k]
  ]


def from_stored(text: str) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (JSON), with every field that was
  added to :func:`get_config` since then at its default."""
  config = get_config()
  config.update(json.loads(text))
  return config


def matches(config, meta: dict) -> bool:
  """Whether ``config`` trains what the checkpoint with ``meta`` was saved by.

  The fingerprints agree; or the checkpoint predates fields that were added
  to the config since, and ``config`` agrees with it on every field it had
  while the newer fields are at their defaults (so a workdir of an older
  jaxcls still resumes).
  """
  if meta.get('fingerprint') == fingerprint(config):
    return True
  try:
    stored = json.loads(meta.get('config') or 'null')
  except json.JSONDecodeError:
    return False
  if not isinstance(stored, dict):
    return False
  base = get_config()
  for key in config:
    if (
      key not in stored
      and key not in RUN_ONLY_FIELDS
      and (key not in base or config[key] != base[key])
    ):
      return False
  return meta.get('fingerprint') == fingerprint(config, keys=set(stored))


# field -> the allowed values (a callable for registries filled on import).
CHOICES = {
  'dataset': data.dataset_names,
  'model': lambda: sorted(models.MODELS),
  'optimizer': lambda: list(optim.OPTIMIZERS),
  'lr_schedule': lambda: list(optim.SCHEDULES),
  'activation': lambda: sorted(activations.ACTIVATIONS),
  'pooling': ('max', 'avg'),
  'parallel': ('jit', 'pmap'),
  'nonfinite_policy': ('stop', 'skip'),
  'compute_dtype': ('float32', 'bfloat16'),
  'readout': ('last', 'mean', 'max'),
  'tokenizer': ('words', 'bytes'),
  'best_by': ('accuracy', 'loss'),
  'cell': ('lstm', 'gru', 'rnn'),
  'device_data': ('auto', 'on', 'off'),
  'augment': ('auto', 'none', 'flip', 'crop_flip'),
  'resnet_shortcut': ('pad', 'projection'),
}

# Each rule: its wording in the error line, and the test (NaN fails all).
_RULES = {
  '> 0': lambda v: v > 0,
  '> 2': lambda v: v > 2,
  '>= 0': lambda v: v >= 0,
  'in [0, 1)': lambda v: 0 <= v < 1,
  'in 1..99': lambda v: 1 <= v <= 99,
  '-1 (all) or > 0': lambda v: v == -1 or v > 0,
}
# field -> rule. Fields an experiment lacks are skipped.
RANGES = {
  'learning_rate': '> 0',
  'batch_size': '> 0',
  'eval_batch_size': '> 0',
  'num_epochs': '> 0',
  'hidden_size': '> 0',
  'max_len': '>= 0',
  'vocab_size': '> 2',
  'num_buckets': '> 0',
  'embed_size': '>= 0',
  'num_layers': '> 0',
  'validation_percent': 'in 1..99',
  'train_examples': '-1 (all) or > 0',
  'dropout_rate': 'in [0, 1)',
  'b1': 'in [0, 1)',
  'b2': 'in [0, 1)',
  'momentum': 'in [0, 1)',
  'weight_decay': '>= 0',
  'grad_clip_norm': '>= 0',
  'l1': '>= 0',
  'l2': '>= 0',
  'warmup_epochs': '>= 0',
  'checkpoint_every_steps': '>= 0',
  'log_every_steps': '>= 0',
  'patience': '>= 0',
  'num_data_shards': '>= 0',
  'max_nonfinite_steps': '>= 0',
  'seed': '>= 0',
  'forget_bias': '>= 0',
  'steps_per_call': '>= 0',
  'accumulate_steps': '> 0',
  'crop_padding': '>= 0',
  'resnet_width': '> 0',
  'label_smoothing': 'in [0, 1)',
  'mixup_alpha': '>= 0',
  'cutmix_alpha': '>= 0',
  'ema_decay': 'in [0, 1)',
}


def _validate_resnet_depth(config) -> None:
  if config.resnet_depth < 8 or (config.resnet_depth - 2) % 6:
    raise ValueError(
      f'resnet_depth must be 6n + 2 (8, 14, 20, 32, 44, 56, '
      f'110, ...), got {config.resnet_depth!r}; set '
      '--config.resnet_depth=...'
    )


def validate(config) -> None:
  """Raises ValueError with one clear line for the first invalid value.

  Driven by the tables :data:`CHOICES` and :data:`RANGES`. Numbers must be
  finite (NaN and inf are refused); the line names the field and how to set it.
  """
  for name, allowed in CHOICES.items():
    if name in config:
      allowed = allowed() if callable(allowed) else allowed
      if config[name] not in allowed and not (
        name == 'dataset' and data.is_sequence(config[name])
      ):
        raise ValueError(
          f'unknown {name} {config[name]!r}; choose one of '
          f'{list(allowed)} (--config.{name}=...)'
        )
  for name, rule in RANGES.items():
    if name not in config:
      continue
    value = config[name]
    if (
      isinstance(value, bool)
      or not isinstance(value, (int, float))
      or not math.isfinite(value)
      or not _RULES[rule](value)
    ):
      raise ValueError(
        f'{name} must be {rule}, got {value!r}; set --config.{name}=...'
      )
  data.fields.check(config)
  if config.get('profile_steps'):
    parse_steps(config.profile_steps)
  if config.model == 'resnet':
    _validate_resnet_depth(config)


def parse_steps(text: str) -> tuple[int, int] | None:
  """``'START:END'`` -> ``(START, END)``, ``''`` -> None (off).

  Raises:
    ValueError: one line naming the value and the form it needs.
  """
  if not text:
    return None
  parts = str(text).split(':')
  try:
    if len(parts) != 2:
      raise ValueError
    start, end = (int(p) for p in parts)
  except ValueError:
    raise ValueError(
      f'profile_steps must be START:END (two step numbers, e.g. 10:20), got '
      f'{text!r}; set --config.profile_steps=10:20 or leave it empty'
    ) from None
  if start < 0 or end <= start:
    raise ValueError(
      f'profile_steps={text!r} needs 0 <= START < END, e.g. 10:20; set '
      '--config.profile_steps=START:END'
    )
  return start, end
