"""The data fields of a config, checked: an image folder's, and what a
sequence dataset (text, time series) leaves no choice in.

:func:`check` raises ValueError with one line naming the field and its fix;
``jaxcls.config.validate`` calls it.
"""

from jaxcls.data import specs


def check(config) -> None:
  """Raises ValueError (one line) for data fields that do not fit."""
  _image_folder(config)
  _sequences(config)


def _image_folder(config) -> None:
  """The fields of dataset 'image_folder'."""
  is_folder = config.dataset == specs.IMAGE_FOLDER
  if is_folder and not config.manual_dir:
    raise ValueError(
      "dataset 'image_folder' needs --config.manual_dir=PATH, "
      'a folder with one subfolder of images per class'
    )
  if config.channels not in (0, 1, 3):
    raise ValueError(
      f'channels must be 1, 3 or 0 (from the data), got {config.channels!r}'
    )
  if config.image_size < 0 or 0 < config.image_size < 4:
    raise ValueError(
      f'image_size must be >= 4 or 0 (from the data), got {config.image_size!r}'
    )
  if (
    not is_folder
    and not specs.is_sequence(config.dataset)
    and (config.image_size or config.channels)
  ):
    raise ValueError(
      f'image_size and channels apply to dataset '
      f"'image_folder' only; {config.dataset} images are "
      f'{specs.get_spec(config.dataset).image_shape}'
    )


def _sequences(config) -> None:
  """Model 'sequence' for sequences only; the fields they leave no choice in."""
  if not specs.is_sequence(config.dataset):
    if config.model == 'sequence' or config.readout == 'max':
      raise ValueError(
        "model 'sequence' and readout 'max' read texts and time series, not "
        f'{config.dataset} images; set --config.dataset=spam_assassin (or '
        'ucr/<Name>), or another --config.model'
      )
    return
  fixed = {
    'model': ('sequence', "'sequence'"),
    'augment': (('auto', 'none'), "'none'"),
    'mixup_alpha': (0, '0'),
    'cutmix_alpha': (0, '0'),
    'flip_tta': (False, 'false'),
    'image_size': (0, '0'),
    'channels': (0, '0'),
  }
  for key, (allowed, fix) in fixed.items():
    if config[key] not in (
      allowed if isinstance(allowed, tuple) else (allowed,)
    ):
      raise ValueError(
        f'dataset {config.dataset} is sequences: {key}={config[key]!r} does '
        f'not apply to them; set --config.{key}={fix}'
      )
