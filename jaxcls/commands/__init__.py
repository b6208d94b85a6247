"""The command line: flag handling and the commands that ship with jaxcls.

* ``cli``: flags in, one ``error: ...`` line out, for every experiment;
* ``report`` (with ``report_figures``), ``predict``, ``export``: the tools,
  run as ``python -m experiments.<tool>`` (thin modules that keep those
  names) or as the ``jaxcls-<tool>`` commands;
* ``entry_points``: the ``jaxcls-*`` console commands of the wheel.

The top layer: it may import all of jaxcls, and nothing in jaxcls imports it.
"""
