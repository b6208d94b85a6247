"""jaxcls as a package: the wheel, an install outside the checkout, commands.

The slow tests build a wheel from the checkout's sources with pip and
setuptools (offline, no build isolation), install it with ``--no-deps`` into
a temporary folder (this environment supplies jax, flax, ...), and run
Python from another temporary folder with only that one on ``PYTHONPATH``.
The fast tests check the ``jaxcls-train`` argument handling in-process.
"""

import ast
import email
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import jax
import numpy as np
import pytest
from packaging.requirements import Requirement

import jaxcls
from jaxcls.commands import entry_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('jaxcls', 'experiments')
COMMANDS = ('jaxcls-train', 'jaxcls-report', 'jaxcls-predict', 'jaxcls-export')

# Run by the installed copy, from a folder outside the checkout: the README's
# "At the REPL" train step, on a batch both sides build the same way.
SCRIPT = """
import json, jax, numpy as np
import jaxcls, experiments.fashion_mnist
config = jaxcls.get_config()
model = jaxcls.create_model(config, num_classes=10)
state = jaxcls.create_train_state(jax.random.key(0), model,
    jaxcls.create_optimizer(config, steps_per_epoch=100), (28, 28, 1))
batch = {'image': np.random.default_rng(0).integers(
             0, 256, (8, 28, 28, 1), np.uint8),
         'label': np.arange(8, dtype=np.int32)}
state, metrics = jax.jit(jaxcls.train_step)(state, batch, jax.random.key(1))
from jaxcls.accel import cpu_conv, cpu_rnn  # C++ sources: package data
print(json.dumps({'jaxcls': jaxcls.__file__, 'version': jaxcls.__version__,
                  'lstm_kernel': cpu_rnn.available(),
                  'conv_kernel': cpu_conv.available(),
                  'experiments': experiments.fashion_mnist.__file__,
                  'step': int(state.step), 'loss': float(metrics['loss'])}))
"""


def one_train_step_loss() -> float:
  """The same step as SCRIPT, with the jaxcls this process imported."""
  config = jaxcls.get_config()
  model = jaxcls.create_model(config, num_classes=10)
  state = jaxcls.create_train_state(
    jax.random.key(0),
    model,
    jaxcls.create_optimizer(config, steps_per_epoch=100),
    (28, 28, 1),
  )
  batch = {
    'image': np.random.default_rng(0).integers(
      0, 256, (8, 28, 28, 1), np.uint8
    ),
    'label': np.arange(8, dtype=np.int32),
  }
  _, metrics = jax.jit(jaxcls.train_step)(state, batch, jax.random.key(1))
  return float(metrics['loss'])


def source_files(package: str) -> set[str]:
  """``package/...`` paths of the checkout's sources (``.py``, and the C++
  kernels' ``.cc``), as in a wheel."""
  found = set()
  for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
    dirs[:] = [d for d in dirs if d != '__pycache__']
    for name in files:
      if name.endswith(('.py', '.cc')):
        found.add(os.path.relpath(os.path.join(folder, name), ROOT))
  return {p.replace(os.sep, '/') for p in found}


def pip(*args: str) -> None:
  subprocess.run(
    [sys.executable, '-m', 'pip', '--disable-pip-version-check', *args],
    check=True,
    capture_output=True,
    text=True,
  )


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """``(wheel path, install folder)``: built and installed once per module."""
  tmp = tmp_path_factory.mktemp('package')
  # Build from a copy, so that the checkout gets no build/ or *.egg-info and
  # a stale build/lib can never leak deleted modules into the wheel.
  src = tmp / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src / name)
  for package in PACKAGES:
    shutil.copytree(
      os.path.join(ROOT, package),
      src / package,
      ignore=shutil.ignore_patterns('__pycache__', '*.pyc'),
    )
  dist, target = tmp / 'dist', tmp / 'site'
  pip(
    'wheel',
    '--no-deps',
    '--no-build-isolation',
    '--no-index',
    '-w',
    str(dist),
    str(src),
  )
  (wheel,) = dist.glob('jaxcls-*.whl')
  pip(
    'install',
    '--no-deps',
    '--no-index',
    '--no-compile',
    '--target',
    str(target),
    str(wheel),
  )
  return wheel, target


def run_outside(target, args, tmp_path):
  """Runs ``python args`` in ``tmp_path`` with only ``target`` on the path."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
    [sys.executable, *args],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_wheel_holds_the_two_packages_commands_and_ranges(built):
  wheel, _ = built
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    info = f'jaxcls-{jaxcls.__version__}.dist-info'
    metadata = email.message_from_string(z.read(f'{info}/METADATA').decode())
    scripts = z.read(f'{info}/entry_points.txt').decode()
  # Only the library and the experiments ship: not tests/ nor benchmarks/.
  assert {n.split('/')[0] for n in names} == {*PACKAGES, info}
  for package in PACKAGES:
    assert source_files(package) <= names
  assert metadata['Version'] == jaxcls.__version__
  # Every command points to a function that exists.
  for command in COMMANDS:
    match = re.search(
      rf'^{command} = jaxcls\.commands\.entry_points:(\w+)$', scripts, re.M
    )
    assert match, (command, scripts)
    assert callable(getattr(entry_points, match.group(1)))
  # The ranges admit the exact versions requirements.txt was tested with.
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    pins = dict(
      re.match(r'([\w.-]+)==([\w.]+)', line).groups()
      for line in f
      if '==' in line
    )
  pins = {k.lower().replace('_', '-'): v for k, v in pins.items()}
  runtime = [
    Requirement(r)
    for r in metadata.get_all('Requires-Dist')
    if 'extra ==' not in r
  ]
  assert len(runtime) >= 10
  for requirement in runtime:
    name = requirement.name.lower().replace('_', '-')
    assert name in pins, f'{name} is not pinned in requirements.txt'
    assert requirement.specifier.contains(pins[name]), (requirement, pins[name])


@pytest.mark.slow
def test_installed_copy_imports_and_trains_from_outside(built, tmp_path):
  _, target = built
  result = run_outside(target, ['-c', SCRIPT], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['jaxcls'].startswith(str(target) + os.sep)
  assert out['experiments'].startswith(str(target) + os.sep)
  assert out['version'] == jaxcls.__version__
  assert out['step'] == 1
  assert out['lstm_kernel'] is True
  assert out['conv_kernel'] is True
  # The installed code computes exactly what the checkout computes.
  np.testing.assert_allclose(out['loss'], one_train_step_loss(), rtol=1e-6)


@pytest.mark.slow
def test_installed_commands_help_and_errors(built, tmp_path):
  _, target = built
  bin_dir = target / 'bin'
  help_ = run_outside(
    target,
    [str(bin_dir / 'jaxcls-train'), '--experiment', 'fashion_mnist', '--help'],
    tmp_path,
  )
  assert help_.returncode == 0, help_.stderr[-3000:]
  # absl prints the experiment module's own docstring.
  assert "The article's CNN on Fashion-MNIST" in help_.stdout
  wrong = run_outside(
    target, [str(bin_dir / 'jaxcls-train'), '--experiment', 'fashion'], tmp_path
  )
  assert wrong.returncode == 2
  lines = wrong.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: unknown experiment')
  assert "did you mean 'fashion_mnist'" in lines[0]
  report = run_outside(
    target, [str(bin_dir / 'jaxcls-report'), '--help'], tmp_path
  )
  assert report.returncode == 0, report.stderr[-3000:]
  assert 'experiments.report' in report.stdout


def test_each_command_runs_a_module_that_exists():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert sorted(scripts) == sorted(COMMANDS)
  for command, target in scripts.items():
    module, function = target.split(':')
    assert module == 'jaxcls.commands.entry_points'
    assert callable(getattr(entry_points, function))
    tool = command[len('jaxcls-') :]
    if tool != 'train':  # jaxcls-X runs experiments/X.py
      assert tool == function and tool in entry_points.TOOLS
      assert os.path.exists(os.path.join(ROOT, 'experiments', tool + '.py'))


def test_version_is_one_literal_that_setuptools_can_read():
  # pyproject.toml reads jaxcls.__version__ without importing jax: that only
  # works while it is a plain string literal in jaxcls/__init__.py.
  with open(os.path.join(ROOT, 'jaxcls', '__init__.py')) as f:
    tree = ast.parse(f.read())
  values = [
    node.value.value
    for node in tree.body
    if isinstance(node, ast.Assign)
    and [t.id for t in node.targets if isinstance(t, ast.Name)]
    == ['__version__']
  ]
  assert values == [jaxcls.__version__]
  assert re.fullmatch(r'\d+\.\d+\.\d+', jaxcls.__version__)


def test_experiment_names_are_the_modules_with_a_config():
  # Independent of the tool list: a training experiment defines get_config.
  expected = set()
  for name in os.listdir(os.path.join(ROOT, 'experiments')):
    if not name.endswith('.py'):
      continue
    with open(os.path.join(ROOT, 'experiments', name)) as f:
      if 'def get_config(' in f.read():
        expected.add(name[: -len('.py')])
  assert set(entry_points.experiment_names()) == expected
  assert 'fashion_mnist' in expected


@pytest.mark.parametrize(
  'argv',
  [
    ['x', '--experiment', 'mnist', '--config.seed=3'],
    ['x', '--experiment=mnist', '--config.seed=3'],
    ['x', '--config.seed=3', '--experiment', 'mnist'],
  ],
)
def test_split_experiment_removes_only_the_experiment_flag(argv):
  assert entry_points.split_experiment(argv) == (
    'mnist',
    ['x', '--config.seed=3'],
  )


@pytest.mark.parametrize(
  ('argv', 'message'),
  [
    (['jaxcls-train'], 'error: --experiment is required'),
    (['jaxcls-train', '--experiment'], 'error: --experiment needs a name'),
    (['jaxcls-train', '--experiment', 'mnits'], "did you mean 'mnist'?"),
    (['jaxcls-train', '--experiment', 'report'], 'unknown experiment'),
  ],
)
def test_train_command_errors_are_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    entry_points.train(argv)
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ')
  assert message in err
  if 'unknown' in message or 'required' in message:
    assert 'fashion_mnist' in err  # names the experiments there are


def test_train_help_without_experiment_lists_them(capsys):
  with pytest.raises(SystemExit) as exit_:
    entry_points.train(['jaxcls-train', '--help'])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  for name in entry_points.experiment_names():
    assert name in out
