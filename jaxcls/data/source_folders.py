"""Where the local files of a dataset are looked for, and what to tell a
user who has none.

:func:`candidate_folders`: ``--config.manual_dir`` if set (then only it);
else TFDS's default manual folder, ``<data_dir>/downloads/manual/<name>`` or
``<data_dir>/downloads/manual``; for Fashion-MNIST also
``$JAXCLS_FASHION_MNIST_DIR``, else Debian's folder. A folder's ``raw/``
subfolder (torchvision's layout) is searched as well.
"""

import os

import tensorflow_datasets as tfds

from jaxcls.data.file_formats import files_wanted, find_files

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_ENV = 'JAXCLS_FASHION_MNIST_DIR'


def data_root(data_dir: str | None) -> str:
  """``data_dir``, or TFDS's default data folder, with ``~`` expanded."""
  return os.path.expanduser(
    data_dir or tfds.core.constants.get_default_data_dir()
  )


def default_manual_dir(name: str, data_dir: str | None) -> str:
  """TFDS's manual folder for ``name``: ``<data_dir>/downloads/manual``."""
  return os.path.join(data_root(data_dir), 'downloads', 'manual', name)


def candidate_folders(
  name: str, manual_dir: str | None, data_dir: str | None
) -> list[str]:
  """The folders searched for ``name``'s files, in order.

  Args:
    name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
    manual_dir: ``--config.manual_dir``: if set, the only folder searched.
    data_dir: TFDS's data folder (None: TFDS's default), which holds the
      default manual folders.

  Returns:
    The folders, as the module docstring lists them.
  """
  if manual_dir:
    return [os.path.expanduser(manual_dir)]
  tfds_manual = default_manual_dir(name, data_dir)
  folders = [tfds_manual, os.path.dirname(tfds_manual)]
  if name == 'fashion_mnist':
    folders.append(os.environ.get(FASHION_MNIST_ENV, DEBIAN_FASHION_MNIST_DIR))
  return folders


def files_present(
  name: str = 'fashion_mnist',
  manual_dir: str | None = None,
  data_dir: str | None = None,
) -> bool:
  """Whether some folder holds files of ``name`` (not whether they are good).

  Args:
    name, manual_dir, data_dir: as for :func:`candidate_folders`.

  Returns:
    True if one of the candidate folders holds one of ``name``'s formats.
  """
  return any(
    find_files(name, f) for f in candidate_folders(name, manual_dir, data_dir)
  )


def unavailable_message(name: str, data_dir: str) -> str:
  """The one line for a dataset that is neither prepared nor downloadable."""
  msg = (
    f"dataset '{name}' is not prepared in {data_dir} and cannot be "
    f'downloaded (no network). Put {files_wanted(name)} in a folder and '
    f'pass --config.manual_dir=FOLDER, or put them in '
    f'{default_manual_dir(name, data_dir)}; or prepare it where there is '
    f'network with `tfds build {name} --data_dir DIR` and copy '
    f'DIR/{name} into {data_dir} (or point --config.data_dir or '
    'TFDS_DATA_DIR at a folder that holds it)'
  )
  if name == 'fashion_mnist':
    msg += (
      f'; or `apt-get install dataset-fashion-mnist` '
      f'(or set ${FASHION_MNIST_ENV} to a folder of the IDX files)'
    )
  return msg + '.'
