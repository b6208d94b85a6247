# `python -m experiments.report --workdir=W`: the command lives in
# jaxcls.commands.report; this module keeps its name and public names.
from jaxcls.commands import report as _command
from jaxcls.commands.report import (  # noqa: F401 (the names it had)
  FLAGS,
  define_flags,
  main,
  plot_test,
  print_model,
  report,
  write_scores,
)
from jaxcls.commands.report_figures import (  # noqa: F401
  misclassified_titles,
  plot_confusion,
  plot_curves,
  plot_misclassified,
  plot_reliability,
  plot_sweep,
)

__doc__ = _command.USAGE  # absl's --help prints the __main__ module's doc.

if __name__ == '__main__':
  _command.run()
