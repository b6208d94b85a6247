"""The shape of the code: imports point down, and modules and functions fit.

Run by anyone, any time: ``python -m pytest -q tests/test_layout.py``. The
import graph is read from the sources (every ``import`` statement, also those
inside functions), so it holds without importing jaxcls.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'jaxcls')

# The subpackages, lowest first: a module may import its own package's
# modules and those of the packages before it, never one after it.
LAYERS = (
  'accel',
  'ops',
  'models',
  'data',
  'optim',
  'config',
  'training',
  'sweep',
  'export',
  'commands',
)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_DOCSTRING_LINES = 15


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


def module_files() -> dict[str, str]:
  """``jaxcls.x.y`` -> path, for every module of the package."""
  found = {}
  for folder, dirs, files in os.walk(PACKAGE):
    dirs[:] = [d for d in dirs if d != '__pycache__']
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[: -len('.py')]
        found[rel.replace(os.sep, '.').removesuffix('.__init__')] = path
  return found


def imported_modules(name: str, path: str, modules) -> set[str]:
  """The jaxcls modules that module ``name`` imports (``from p import m``
  counts as importing module ``p.m`` when it is one, else ``p``)."""
  is_package = path.endswith('__init__.py')
  package = name if is_package else name.rpartition('.')[0]
  out = set()
  for node in ast.walk(ast.parse(_read(path))):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')[: len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      for a in node.names:
        if a.name == '__version__':
          continue  # the root's version literal loads nothing
        sub = f'{base}.{a.name}'
        out.add(sub if sub in modules else base)
  return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
  modules = module_files()
  return {m: imported_modules(m, p, modules) for m, p in modules.items()}


def find_cycle(graph) -> list[str]:
  """One import cycle as a list of modules, or [] when there is none."""
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 'open':
        return stack[stack.index(n) :] + [n]
      if n not in state and (cycle := visit(n)):
        return cycle
    state[m] = 'done'
    stack.pop()
    return []

  for m in sorted(graph):
    if m not in state and (cycle := visit(m)):
      return cycle
  return []


def layer(module: str) -> int | None:
  """The index of a module's subpackage in LAYERS (None: the root)."""
  parts = module.split('.')
  return LAYERS.index(parts[1]) if len(parts) > 1 else None


def test_the_import_graph_has_no_cycles():
  assert find_cycle(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) == []


def test_every_module_is_in_a_layer_and_imports_point_down():
  graph = import_graph()
  back = []
  for module, imports in graph.items():
    if module == 'jaxcls':
      continue
    assert len(module.split('.')) > 1 and module.split('.')[1] in LAYERS, (
      f'{module}: put it in one of the subpackages {LAYERS}'
    )
    back += [
      f'{module} -> {m}'
      for m in imports
      if m == 'jaxcls' or layer(m) > layer(module)
    ]
  assert back == []


def test_the_root_imports_nothing_eagerly():
  """``import jaxcls`` is cheap: the public API loads on first use."""
  tree = ast.parse(_read(os.path.join(PACKAGE, '__init__.py')))
  top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
  assert all(
    not (getattr(n, 'module', None) or n.names[0].name).startswith('jaxcls')
    for n in top
  )


def _functions(tree):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def _docstrings(tree):
  for node in ast.walk(tree):
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    if isinstance(node, kinds) and (doc := ast.get_docstring(node, False)):
      yield getattr(node, 'name', '<module>'), doc


@pytest.mark.parametrize('path', sorted(module_files().values()))
def test_modules_functions_and_docstrings_fit(path):
  rel = os.path.relpath(path, ROOT)
  source = _read(path)
  tree = ast.parse(source)
  assert len(source.splitlines()) <= MAX_MODULE_LINES, rel
  long_functions = [
    f'{f.name} ({f.end_lineno - f.lineno + 1} lines)'
    for f in _functions(tree)
    if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
  ]
  assert long_functions == [], rel
  long_docs = [
    f'{name} ({len(doc.splitlines())} lines)'
    for name, doc in _docstrings(tree)
    if len(doc.splitlines()) > MAX_DOCSTRING_LINES
  ]
  assert long_docs == [], rel


def test_old_module_names_still_import_with_a_warning():
  """Code written before the subpackages keeps working (one warning)."""
  import subprocess
  import sys

  script = (
    'import warnings; warnings.simplefilter("error", DeprecationWarning)\n'
    'import jaxcls\n'
    'assert jaxcls.train_step.__module__ == "jaxcls.training.steps"\n'
    'from jaxcls import models; assert "lstm" in models.MODELS\n'
    'try:\n'
    '  import jaxcls.train\n'
    'except DeprecationWarning as e:\n'
    '  print(e)\n'
    'warnings.simplefilter("ignore")\n'
    'import jaxcls.train, jaxcls.training.run\n'
    'assert jaxcls.train is jaxcls.training.run\n'
    'from jaxcls.recurrent import LSTMCell\n'
    'assert LSTMCell is jaxcls.LSTMCell\n'
  )
  out = subprocess.run(
    [sys.executable, '-c', script],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == (
    'jaxcls.train moved to jaxcls.training.run; import it from there'
  )
