# `python -m experiments.predict --workdir=W image.png`: the command lives in
# jaxcls.commands.predict; this module keeps its name and public names.
from jaxcls.commands import predict as _command
from jaxcls.commands.predict import (  # noqa: F401 (the names it had)
  FLAGS,
  MAX_PIXELS,
  BadImageError,
  define_flags,
  load_image,
  main,
  predict,
  predict_exported,
  top_k,
)

__doc__ = _command.USAGE  # absl's --help prints the __main__ module's doc.

if __name__ == '__main__':
  _command.run()
