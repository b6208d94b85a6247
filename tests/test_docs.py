"""The docs that are generated or measured: the configuration page, the
README's length, and the accelerators' boundary in the import graph."""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import config_page  # noqa: E402


def test_the_configuration_page_is_current():
  with open(config_page.PAGE) as f:
    assert f.read() == config_page.page(), (
      'docs/configuration.md is stale: run python tools/config_page.py'
    )


def test_the_readme_is_short():
  with open(os.path.join(ROOT, 'README.md')) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 300, len(lines)
  assert not any('round ' in ln.lower() for ln in lines)


def _imports(path: str) -> set[str]:
  """The jaxcls modules a file imports (``from jaxcls import x``: jaxcls.x)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found |= {f'{node.module}.{a.name}' for a in node.names}
  return {m for m in found if m == 'jaxcls' or m.startswith('jaxcls.')}


def test_only_fastpath_reaches_the_accelerators():
  """jaxcls/accel/ can be deleted: one module outside it imports it, and it
  imports nothing of the rest of jaxcls."""
  package = os.path.join(ROOT, 'jaxcls')
  for folder, _, files in os.walk(package):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      imports = _imports(path)
      rel = os.path.relpath(path, ROOT)
      if rel.startswith(os.path.join('jaxcls', 'accel')):
        outside = {m for m in imports if not m.startswith('jaxcls.accel')} - {
          'jaxcls'
        }
        assert not outside, (rel, outside)
      elif rel != os.path.join('jaxcls', 'ops', 'fastpath.py'):
        assert not any(m.startswith('jaxcls.accel') for m in imports), rel


def test_results_have_one_source_for_readme_and_help():
  import importlib
  import re

  from experiments import results

  with open(os.path.join(ROOT, 'README.md')) as f:
    assert results.table() in f.read(), (
      "README's results table is stale: paste experiments.results.table()"
    )
  for name in sorted({row[0] for row in results.ROWS}):
    doc = importlib.import_module(f'experiments.{name}').__doc__
    # Measured figures live in experiments/results.py only.
    assert not re.search(r'\d+\.\d\d%|images/s', doc), name
    assert results.measured(name).count('python -m experiments.') == sum(
      row[0] == name for row in results.ROWS
    )
