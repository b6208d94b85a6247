"""Building and loading jaxcls's C++ kernels (XLA FFI, CPU only).

The kernels (``jaxcls/csrc/*.cc``: the LSTM and GRU in :mod:`jaxcls.cpu_rnn`,
the CNN block in :mod:`jaxcls.cpu_conv`) ship as source. The first trace
that wants one compiles its file with the system's C++ compiler (``$CXX``,
else ``c++``; a few seconds) against jaxlib's FFI headers, for this machine's
CPU (``-march=native``), into :func:`cache_dir`, once per source, jaxlib,
compiler and CPU; the file is written atomically, so processes building at
once are safe. Without a compiler, or if the build fails, one warning line
says why and the caller falls back to XLA's own ops: the kernels only ever
make things faster, never make them fail.
"""

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from importlib import resources

import jax
import jaxlib

FLAGS = (
  '-O3',
  '-march=native',
  '-fopenmp-simd',
  '-fno-math-errno',
  '-std=c++17',
  '-fPIC',
  '-shared',
)


def cache_dir() -> str:
  """Where built kernels live: ``$JAXCLS_CACHE``, else ``~/.cache/jaxcls``."""
  if os.environ.get('JAXCLS_CACHE'):
    return os.environ['JAXCLS_CACHE']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
    os.path.expanduser('~'), '.cache'
  )
  return os.path.join(base, 'jaxcls')


def _cpu_signature() -> str:
  """The CPU's feature flags: ``-march=native`` code runs only on such CPUs."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.machine() + platform.processor()


def _compiler_version(compiler: list[str]) -> str:
  out = subprocess.run(
    [*compiler, '--version'], capture_output=True, text=True, timeout=60
  )
  if out.returncode != 0:
    raise OSError(f'{compiler} --version failed')
  return out.stdout


def build(stem: str) -> str:
  """Compiles ``jaxcls/csrc/<stem>.cc`` unless cached; returns the .so path."""
  source = resources.files('jaxcls').joinpath(f'csrc/{stem}.cc').read_bytes()
  cxx = os.environ.get('CXX', 'c++')
  compiler = shlex.split(cxx)  # e.g. CXX='ccache g++'
  try:
    version = _compiler_version(compiler)
  except (OSError, ValueError, subprocess.SubprocessError):
    raise RuntimeError(
      f'no C++ compiler {cxx!r} (install g++ or set CXX)'
    ) from None
  key = hashlib.sha256(
    b'\0'.join(
      s if isinstance(s, bytes) else s.encode()
      for s in (
        source,
        jaxlib.__version__,
        version,
        ' '.join(FLAGS),
        _cpu_signature(),
      )
    )
  ).hexdigest()[:16]
  folder = cache_dir()
  path = os.path.join(folder, f'{stem}-{key}.so')
  if os.path.exists(path):
    return path
  os.makedirs(folder, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    src = os.path.join(tmp, f'{stem}.cc')
    with open(src, 'wb') as f:
      f.write(source)
    out = os.path.join(tmp, f'{stem}.so')
    cmd = [*compiler, *FLAGS, '-I', jax.ffi.include_dir(), src, '-o', out]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
      errors = [ln for ln in done.stderr.splitlines() if 'error' in ln]
      raise RuntimeError(
        f'{cxx} failed: {(errors or done.stderr.splitlines() or ["?"])[0]}'
      )
    # Atomic: another process building the same key sees all or nothing.
    os.replace(out, path)
  return path


_lock = threading.Lock()


def load(
  state: dict, stem: str, targets: tuple[str, ...], what: str, fallback: str
) -> ctypes.CDLL | None:
  """Builds, loads and registers ``stem``'s FFI targets once per process.

  ``state`` (``{'tried', 'library', 'error'}``) is the caller's record; on a
  failure it keeps the one-line reason and a warning says that ``what`` is
  unavailable and ``fallback`` runs instead.
  """
  with _lock:
    if not state['tried']:
      state['tried'] = True
      try:
        library = ctypes.cdll.LoadLibrary(build(stem))
        for name in targets:
          jax.ffi.register_ffi_target(
            name, jax.ffi.pycapsule(getattr(library, name)), platform='cpu'
          )
        state['library'] = library
      except Exception as e:  # noqa: BLE001 - any failure means: fall back.
        state['error'] = str(e).splitlines()[0] if str(e) else repr(e)
        logging.getLogger('jaxcls').warning(
          'jaxcls: %s unavailable (%s); %s instead',
          what,
          state['error'],
          fallback,
        )
    return state['library']


@contextlib.contextmanager
def kernels_disabled():
  """Traces inside use none of jaxcls's C++ kernels, only XLA's own ops.

  For programs that must run without jaxcls (exports), that XLA must see
  through (FLOP counts, Flax's summary table), and A/B benchmarks; a new
  kernel module adds its switch here, not at each of those places.
  """
  from jaxcls import cpu_conv, cpu_rnn  # Lazy: both import this module.

  with cpu_conv.disabled(), cpu_rnn.disabled():
    yield
