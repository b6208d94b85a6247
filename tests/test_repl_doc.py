"""docs/REPL.md, run as a doctest so that the documented session works."""

import doctest
import os
import re

import pytest

from trained_workdir import trained_workdir

pytestmark = pytest.mark.slow  # Trains models: the full tier.

DOC = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'REPL.md'
)


def pycon_blocks(text: str) -> str:
  """The ```pycon blocks of a Markdown file, as one doctest text.

  Taking the blocks (rather than ``doctest.testfile`` on the whole file)
  keeps a closing fence from being read as an example's expected output.
  """
  blocks = re.findall(r'^```pycon\n(.*?)^```', text, re.S | re.M)
  assert blocks, f'no ```pycon blocks in {DOC}'
  return '\n'.join(blocks)


def test_repl_session_runs(monkeypatch):
  workdir, _ = trained_workdir()
  monkeypatch.setenv('JAXCLS_WORKDIR', workdir)
  with open(DOC) as f:
    text = pycon_blocks(f.read())
  test = doctest.DocTestParser().get_doctest(text, {}, 'REPL.md', DOC, 0)
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  runner = doctest.DocTestRunner(optionflags=flags)
  failures = []
  runner.run(test, out=failures.append)
  assert runner.summarize(verbose=False).attempted >= 30
  assert not failures, ''.join(failures)
