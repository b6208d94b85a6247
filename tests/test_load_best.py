"""Reading the best checkpoint while a run may be replacing it."""

import pytest

from jaxcls.training import checkpoint, inspection
from trained_workdir import trained_workdir


@pytest.mark.slow  # Over 2 s (mostly compiling): the full tier.
def test_load_best_retries_a_best_checkpoint_replaced_while_read(
  tmp_path, monkeypatch
):
  # A writer replacing checkpoints/best/<step> makes Orbax fail on its
  # metadata; the reader then finds that step gone and reads the new best.
  workdir, _ = trained_workdir()
  real, calls = inspection._best_meta, []

  def racing(path):
    calls.append(path)
    if len(calls) == 1:
      error = checkpoint.CheckpointError('unreadable (KeyError)')
      error.step = 10**6  # No such folder: it was replaced.
      raise error
    return real(path)

  monkeypatch.setattr(inspection, '_best_meta', racing)
  config, state = inspection.load_best(workdir)
  assert len(calls) == 2 and int(state.step) > 0


def test_load_best_does_not_retry_a_damaged_newest_checkpoint(
  tmp_path, monkeypatch
):
  workdir, _ = trained_workdir()
  step = checkpoint.make_manager(workdir, 'best', read_only=True).latest_step()
  calls = []

  def damaged(path):
    calls.append(path)
    error = checkpoint.CheckpointError('unreadable (KeyError)')
    error.step = step  # Still there and still the newest: damaged.
    raise error

  monkeypatch.setattr(inspection, '_best_meta', damaged)
  with pytest.raises(checkpoint.CheckpointError, match='unreadable'):
    inspection.load_best(workdir)
  assert len(calls) == 1
