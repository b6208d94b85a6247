# `python -m experiments.export --workdir=W`: the command lives in
# jaxcls.commands.export; this module keeps its name and public names.
from jaxcls.commands import export as _command
from jaxcls.commands.export import FLAGS, define_flags, main  # noqa: F401

__doc__ = _command.USAGE  # absl's --help prints the __main__ module's doc.

if __name__ == '__main__':
  _command.run()
