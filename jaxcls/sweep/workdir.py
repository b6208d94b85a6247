"""A sweep's workdir: which sweep its ``sweep.json`` records, and refusing,
before anything is trained, a workdir that holds another sweep or run."""

import json
import os

from jaxcls import config as config_lib
from jaxcls.sweep.grid import SWEEP_PREFIX, member_config
from jaxcls.training import workdir as workdir_lib


def shared_fields(config) -> dict:
  """What every member of a sweep shares, as ``sweep.json`` records it.

  Args:
    config: the sweep config.

  Returns:
    The fields that define what is trained (not RUN_ONLY_FIELDS), less the
    sweep's own, as JSON values; the swept fields' values are those of the
    members.
  """
  return json.loads(
    json.dumps(
      {
        k: v
        for k, v in member_config(config, {}).to_dict().items()
        if k not in config_lib.RUN_ONLY_FIELDS
      },
      default=str,
    )
  )


def _listed(values) -> str:
  """Swept values as a ``sweep_<field>`` flag writes them ('' if none)."""
  if values is None:
    return "''"
  return ','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)


def _legacy_changes(saved: dict, workdir: str, config) -> list:
  """What differs from a ``sweep.json`` of an older jaxcls, which lacks the
  shared fields: its best member's fingerprint, in ``results.json``."""
  best = (saved.get('best') or {}).get('values')
  had = workdir_lib.read_results(workdir).get('config_fingerprint')
  if best is None or had is None:
    return []
  mine = config_lib.fingerprint(member_config(config, best))
  what = "an unswept field (the best member's config fingerprint)"
  return [] if had == mine else [(what, had, mine, False)]


def _sweep_changes(saved: dict, workdir: str, config, swept, grid) -> list:
  """``(what, saved, now, flag)`` for each way the sweep ``saved`` (its
  ``sweep.json``) differs from this one; ``flag``: a config field to name."""
  now = json.loads(json.dumps(swept, default=str))
  then = saved.get('swept') or {}
  changes = [
    (f'{SWEEP_PREFIX}{f}', _listed(then.get(f)), _listed(now.get(f)), True)
    for f in sorted(set(then) | set(now))
    if then.get(f) != now.get(f)
  ]
  members = [m.get('values') for m in saved.get('members') or []]
  if not changes and members != json.loads(json.dumps(grid, default=str)):
    # The same values, other members drawn (sweep_samples, sample seed).
    changes.append(('members drawn', len(members), len(grid), False))
  old, new = saved.get('config'), shared_fields(config)
  if old is None:
    return changes or _legacy_changes(saved, workdir, config)
  return changes + [
    (k, old.get(k), new.get(k), True)
    for k in sorted(set(old) | set(new))
    if k not in then and k not in now and old.get(k) != new.get(k)
  ]


def _check_unsummarized(workdir: str) -> None:
  """Refuses a workdir with checkpoints but no ``sweep.json``."""
  folders = [
    os.path.join(workdir, 'checkpoints', n) for n in ('best', 'latest')
  ]
  if any(os.path.isdir(f) and os.listdir(f) for f in folders):
    raise ValueError(
      f'{workdir} holds checkpoints but no sweep.json (a single run, or a '
      'sweep that did not finish); a sweep would replace them: use another '
      '--workdir'
    )


def _read_summary(path: str) -> dict:
  """The ``sweep.json`` at ``path``; ValueError if it is not one."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
      f'{path} is unreadable ({type(e).__name__}); use another --workdir'
    ) from None
  if not isinstance(saved, dict):
    raise ValueError(f'{path} is not a sweep summary; use another --workdir')
  return saved


def check_workdir(workdir: str, config, swept: dict, grid: list) -> None:
  """Refuses, before anything is trained, a workdir of another sweep.

  The best member is saved as a normal run, whose checkpoints must be of
  this sweep: a workdir whose ``sweep.json`` records another grid or other
  shared fields, or that holds checkpoints without a ``sweep.json`` (a
  single run's), would be trained for nothing and then refused, or lose
  its run.

  Args:
    workdir: the sweep's workdir.
    config, swept, grid: the sweep config, its swept values and members.

  Raises:
    ValueError: in one line: the workdir, what differs, the fix.
  """
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    _check_unsummarized(workdir)
    return
  saved = _read_summary(path)
  changes = _sweep_changes(saved, workdir, config, swept, grid)
  if not changes:
    return
  what = ', '.join(f'{k}: {a} -> {b}' for k, a, b, _ in changes)
  flags = ' '.join(f'--config.{k}={a}' for k, a, _, flag in changes if flag)
  fix = f", or the saved sweep's values ({flags})" if flags else ''
  raise ValueError(
    f'{workdir} holds another sweep ({what}); nothing was trained: use '
    f'another --workdir{fix}'
  )
