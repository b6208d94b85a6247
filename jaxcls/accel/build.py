"""Building and loading jaxcls's C++ kernels (XLA FFI, CPU only).

The kernels (``csrc/*.cc``: the LSTM and GRU of :mod:`jaxcls.accel.cpu_rnn`,
the CNN block of :mod:`jaxcls.accel.cpu_conv`) ship as source. The first
trace that wants one compiles it with the system's C++ compiler (``$CXX``,
else ``c++``) for this machine's CPU into :func:`cache_dir`, once per source,
jaxlib, compiler and CPU. Without a compiler, or if the build fails, one
warning line says why and the caller falls back to XLA's own ops: a kernel
never makes a run fail. Whether a built kernel runs is
:mod:`jaxcls.accel.choice`'s call.

The cache holds code this process will execute, so it must be this user's
alone (:func:`private_dir`), and a library loads only if its sha256 matches
the digest written when it was built. Without ``$HOME`` there is no cache
unless ``$JAXCLS_CACHE`` names one: never a folder relative to the cwd.
"""

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


class UnsafeCacheError(RuntimeError):
  """The kernel cache is not this user's alone, or has no safe place."""


def cache_dir() -> str:
  """Where built kernels live: ``$JAXCLS_CACHE``, else ``~/.cache/jaxcls``.

  Raises UnsafeCacheError if neither ``$JAXCLS_CACHE`` nor ``$XDG_CACHE_HOME``
  nor ``$HOME`` gives an absolute path.
  """
  for name, tail in (
    ('JAXCLS_CACHE', ()),
    ('XDG_CACHE_HOME', ('jaxcls',)),
    ('HOME', ('.cache', 'jaxcls')),
  ):
    value = os.environ.get(name)
    if value:
      if not os.path.isabs(value):
        raise UnsafeCacheError(
          f'${name}={value!r} is not an absolute path; the kernel cache '
          'needs one (set JAXCLS_CACHE=/abs/path)'
        )
      return os.path.join(value, *tail)
  raise UnsafeCacheError(
    'no kernel cache: neither $JAXCLS_CACHE nor $HOME is set (set '
    'JAXCLS_CACHE=/abs/path)'
  )


def _check_private(path: str, what: str) -> None:
  """Refuses ``path`` unless this user owns it and no one else can write."""
  st = os.stat(path)
  if st.st_uid != os.getuid() or st.st_mode & 0o022:
    raise UnsafeCacheError(
      f'{what} {path} is owned by uid {st.st_uid} with mode '
      f'{st.st_mode & 0o777:o}; it must be yours and not group- or '
      f'world-writable (chmod 700 it, or set JAXCLS_CACHE to a private '
      'folder)'
    )


def private_dir() -> str:
  """:func:`cache_dir`, made ``0700`` if new, checked to be this user's.

  Raises UnsafeCacheError (the caller runs XLA's ops and says why in one
  line) if another user owns it or others can write to it.
  """
  folder = cache_dir()
  os.makedirs(folder, mode=0o700, exist_ok=True)
  _check_private(folder, 'the kernel cache')
  return folder


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _verified(path: str) -> bool:
  """Whether ``path`` exists, is ours and matches its recorded digest."""
  if not os.path.exists(path):
    return False
  _check_private(path, 'the kernel library')
  try:
    with open(path + '.sha256') as f:
      return f.read().strip() == _sha256(path)
  except OSError:
    return False


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
  source = (
    resources.files('jaxcls.accel').joinpath(f'csrc/{stem}.cc').read_bytes()
  )
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
        cxx,  # The compiler command with its flags: CXX='g++ -O0' differs.
        _cpu_signature(),
      )
    )
  ).hexdigest()[:16]
  folder = private_dir()
  path = os.path.join(folder, f'{stem}-{key}.so')
  if _verified(path):
    return path
  with tempfile.TemporaryDirectory(dir=folder) as tmp:
    src = os.path.join(tmp, f'{stem}.cc')
    with open(src, 'wb') as f:
      f.write(source)
    out = os.path.join(tmp, f'{stem}.so')
    cmd = [*compiler, *FLAGS, '-I', jax.ffi.include_dir(), src, '-o', out]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
      errors = [ln for ln in done.stderr.splitlines() if 'error' in ln]
      full = [ln for ln in done.stderr.splitlines() if 'No space left' in ln]
      raise RuntimeError(
        f'{cxx} failed: '
        f'{(full or errors or done.stderr.splitlines() or ["?"])[0]}'
      )
    # Atomic: another process building the same key sees all or nothing;
    # the digest goes first, so a library is never there without it.
    digest = os.path.join(tmp, 'digest')
    with open(digest, 'w') as f:
      f.write(_sha256(out))
    os.replace(digest, path + '.sha256')
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
