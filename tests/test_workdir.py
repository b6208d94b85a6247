"""Never lose work, round 2: the workdir lock, readers of a live run, signals
between epochs, damaged results and checkpoints, resume edge cases and the
one-line promise of the command line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_config
from jaxcls import config as config_lib
from jaxcls import data
from jaxcls.commands import cli
from jaxcls.training import checkpoint, evaluation, inspection
from jaxcls.training import run as train
from jaxcls.training import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Trains models: the full tier.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_EPOCHS = dict(train_examples=1024, num_epochs=2, dropout_rate=0.3)


def cli_run(*flags, module='experiments.fashion_mnist', timeout=300):
  """The experiment's command line in a subprocess: (rc, stdout, stderr)."""
  proc = subprocess.run(
    [sys.executable, '-m', module, *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
  )
  return proc.returncode, proc.stdout, proc.stderr


def one_error_line(stderr: str) -> str:
  lines = [ln for ln in stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), stderr[-2000:]
  return lines[0]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted two-epoch run: its results."""
  return train.train_and_evaluate(
    tiny_config(**TWO_EPOCHS), str(tmp_path_factory.mktemp('reference'))
  )


# The lock.


def test_a_second_run_on_a_locked_workdir_stops_with_one_line(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    rc, _, err = cli_run(
      f'--workdir={tmp_path}',
      '--config.train_examples=512',
      '--config.num_epochs=1',
    )
  assert rc == 2
  assert 'in use by another run' in one_error_line(err)
  assert f'pid {os.getpid()}' in err
  assert sorted(os.listdir(tmp_path)) == ['lock']  # Nothing else written.


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys, time; from jaxcls import workdir; '
      f'cm = workdir.lock({str(tmp_path)!r}); cm.__enter__(); '
      'print("locked", flush=True); time.sleep(600)',
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == 'locked'
  with (
    pytest.raises(workdir_lib.WorkdirBusyError),
    workdir_lib.lock(str(tmp_path)),
  ):
    pass
  holder.kill()  # SIGKILL: no cleanup code runs.
  holder.wait()
  with workdir_lib.lock(str(tmp_path)):  # The kernel released it.
    pass


# Readers never touch a live run.


def test_readers_never_delete_a_writers_unfinished_save(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(train_examples=512), workdir)
  in_flight = os.path.join(
    workdir, 'checkpoints', 'best', '99.orbax-checkpoint-tmp-1234'
  )
  os.makedirs(os.path.join(in_flight, 'state'))
  inspection.load_best(workdir)
  inspection.best_config(workdir)
  checkpoint.make_manager(workdir, 'latest', read_only=True).latest_step()
  assert os.path.isdir(in_flight)


@pytest.mark.slow
def test_report_and_predict_against_a_live_run_change_nothing(
  reference, tmp_path
):
  workdir = str(tmp_path / 'live')
  flags = [
    f'--workdir={workdir}',
    '--config.train_examples=1024',
    '--config.num_epochs=2',
    '--config.dropout_rate=0.3',
    '--config.checkpoint_every_steps=2',
    '--config.lr_schedule=constant',
  ]  # tiny_config's, as the reference
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  proc = subprocess.Popen(
    [sys.executable, '-m', 'experiments.fashion_mnist', *flags],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  reads = 0
  while proc.poll() is None:
    try:
      inspection.load_best(workdir)
      reads += 1
    except checkpoint.CheckpointError:
      pass  # No best checkpoint yet.
    time.sleep(0.05)
  out, err = proc.communicate()
  assert proc.returncode == 0, err[-2000:]
  assert reads > 0
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert results['params_sha256'] == reference['params_sha256']
  assert results['best_val_accuracy'] == reference['best_val_accuracy']
  assert results['best_epoch'] == reference['best_epoch']


# Signals at every point where the loop can stop.


def test_sigterm_between_epochs_saves_and_exits_then_resumes_exactly(
  reference, tmp_path, monkeypatch
):
  workdir = str(tmp_path)
  permutation = data.epoch_permutation

  def signal_at_epoch_1(seed, epoch, n, shard=0):
    if epoch == 1:  # After epoch 0's end-of-epoch checks, before a step.
      os.kill(os.getpid(), signal.SIGTERM)
    return permutation(seed, epoch, n, shard)

  monkeypatch.setattr(data, 'epoch_permutation', signal_at_epoch_1)
  with pytest.raises(SystemExit) as exit_info:
    train.train_and_evaluate(tiny_config(**TWO_EPOCHS), workdir)
  assert exit_info.value.code == 128 + signal.SIGTERM
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  monkeypatch.setattr(data, 'epoch_permutation', permutation)
  results = train.train_and_evaluate(tiny_config(**TWO_EPOCHS), workdir)
  assert results['params_sha256'] == reference['params_sha256']
  assert results['epochs_trained'] == 2


def test_sigterm_during_validation_keeps_the_training_time(
  reference, tmp_path, monkeypatch
):
  workdir = str(tmp_path)
  evaluate, calls = evaluation.evaluate, []

  def signal_in_first_validation(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(evaluation, 'evaluate', signal_in_first_validation)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(tiny_config(**TWO_EPOCHS), workdir)
  monkeypatch.setattr(evaluation, 'evaluate', evaluate)
  results = train.train_and_evaluate(tiny_config(**TWO_EPOCHS), workdir)
  assert results['params_sha256'] == reference['params_sha256']
  assert results['train_seconds'] > 0
  # Both epochs' images count, the first one trained before the signal.
  steps = results['steps']
  assert results['train_images_per_second'] == pytest.approx(
    steps * 64 / results['train_seconds']
  )


# Damaged results and checkpoints.


def test_a_corrupt_results_file_is_reported_before_training(tmp_path):
  (tmp_path / 'results.json').write_text('{"test_accuracy": 0.9')
  with pytest.raises(ValueError, match='results.json is not valid JSON'):
    train.train_and_evaluate(tiny_config(train_examples=512), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()  # Nothing trained.


def test_a_missing_best_checkpoint_is_chosen_again(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(**TWO_EPOCHS), workdir)
  best = os.path.join(workdir, 'checkpoints', 'best')
  # A finished run whose best folder was lost: the final state is taken.
  subprocess.run(['rm', '-rf', best], check=True)
  results = train.train_and_evaluate(tiny_config(**TWO_EPOCHS), workdir)
  assert results['best_epoch'] == 2 and os.path.isdir(best)
  # Extended (constant schedule): the best is picked among the new epochs.
  subprocess.run(['rm', '-rf', best], check=True)
  results = train.train_and_evaluate(
    tiny_config(**{**TWO_EPOCHS, 'num_epochs': 3}), workdir
  )
  assert results['best_epoch'] == 3
  meta = inspection.best_config(workdir)
  assert meta.num_epochs == 3


# Resume edge cases.


def test_fewer_epochs_than_trained_are_refused(tmp_path):
  train.train_and_evaluate(tiny_config(**TWO_EPOCHS), str(tmp_path))
  with pytest.raises(ValueError, match='already holds 2 epochs'):
    train.train_and_evaluate(
      tiny_config(**{**TWO_EPOCHS, 'num_epochs': 1}), str(tmp_path)
    )


def test_extending_a_schedule_that_depends_on_num_epochs_is_refused(tmp_path):
  config = tiny_config(
    **{**TWO_EPOCHS, 'num_epochs': 1}, lr_schedule='warmup_cosine'
  )
  train.train_and_evaluate(config, str(tmp_path))
  config.num_epochs = 2
  with pytest.raises(ValueError, match='lr_schedule=warmup_cosine'):
    train.train_and_evaluate(config, str(tmp_path))


def test_extending_a_constant_schedule_equals_the_longer_run(
  reference, tmp_path
):
  train.train_and_evaluate(
    tiny_config(**{**TWO_EPOCHS, 'num_epochs': 1}), str(tmp_path)
  )
  results = train.train_and_evaluate(tiny_config(**TWO_EPOCHS), str(tmp_path))
  assert results['params_sha256'] == reference['params_sha256']


# The one-line promise.


@pytest.mark.parametrize(
  'flag,names',
  [
    ('--config.learning_rate=abc', 'learning_rate'),
    ('--config.seed=-1', 'seed'),
    ('--config.weight_decay=nan', 'weight_decay'),
    ('--config.train_examples=0', 'train_examples'),
    ('--config.device_data=gpu', 'device_data'),
  ],
)
def test_bad_flags_are_one_line_before_anything_is_written(
  tmp_path, flag, names
):
  workdir = tmp_path / 'w'
  start = time.monotonic()
  rc, _, err = cli_run(f'--workdir={workdir}', flag)
  assert rc == 2
  assert names in one_error_line(err)
  assert not workdir.exists()
  assert time.monotonic() - start < 60  # No data was loaded.


def test_ctrl_c_outside_the_loop_is_one_line(capsys):
  def loading():
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_info:
    cli.call(loading)
  assert exit_info.value.code == 130
  assert one_error_line(capsys.readouterr().err).startswith(
    'error: interrupted (Ctrl-C)'
  )


def test_a_failed_save_is_one_line_naming_the_folder(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(checkpoint.CheckpointError) as error:
    train.train_and_evaluate(tiny_config(train_examples=512), str(tmp_path))
  message = str(error.value)
  assert '\n' not in message and 'No space left on device' in message
  assert os.path.join(str(tmp_path), 'checkpoints') in message


def test_a_full_disk_is_one_line_from_the_command_line(tmp_path):
  """A real full disk: a 3 MB tmpfs (needs root; skipped elsewhere)."""
  mount = tmp_path / 'small'
  mount.mkdir()
  if subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)],
    capture_output=True,
  ).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    rc, _, err = cli_run(
      f'--workdir={mount}/w',
      '--config.train_examples=512',
      '--config.num_epochs=2',
    )
  finally:
    subprocess.run(['umount', str(mount)], check=False)
  assert rc == 2
  line = one_error_line(err)
  # The save's own error, or the OS error of another write: both name the
  # folder, and nothing else is printed (no tracebacks of Orbax's threads).
  assert str(mount) in line
  assert 'could not save a checkpoint' in line or 'No space left' in line


def test_results_of_an_earlier_run_are_kept_when_merging(tmp_path):
  workdir_lib.write_results(str(tmp_path), {'a': 1})
  workdir_lib.write_results(str(tmp_path), {'b': 2})
  assert workdir_lib.read_results(str(tmp_path)) == {'a': 1, 'b': 2}
  config_lib.validate(tiny_config())  # The tiny config itself is valid.


def test_a_killed_prepare_leaves_no_incomplete_folders(tmp_path):
  class Builder:  # The two things data.prepare asks of a TFDS builder.
    data_dir = str(tmp_path / 'ds' / '1.0.0')
    prepared_with = None

    def is_prepared(self):
      return self.prepared_with is not None

    def download_and_prepare(self, **kwargs):
      self.prepared_with = kwargs

  stale = tmp_path / 'ds' / 'incomplete.ABC123_1.0.0'
  (stale / 'part').mkdir(parents=True)
  builder = Builder()
  data.prepare(builder, download_config='x')
  assert not stale.exists()
  assert builder.prepared_with == {'download_config': 'x'}


def test_a_refusal_names_the_fields_that_differ_and_the_saved_flags():
  from jaxcls import config as config_lib
  from jaxcls.training import checkpoint

  saved = config_lib.get_config()
  now = config_lib.get_config()
  now.learning_rate, now.model = 3e-4, 'lstm'
  now.num_epochs = saved.num_epochs + 5  # Run-only: not a difference.
  meta = {
    'fingerprint': config_lib.fingerprint(saved),
    'config': saved.to_json(),
  }
  assert config_lib.differences(now, meta['config']) == [
    ('learning_rate', saved.learning_rate, 3e-4),
    ('model', saved.model, 'lstm'),
  ]
  line = checkpoint._refusal('W/1', meta, config_lib.fingerprint(now), now)
  assert f'learning_rate: {saved.learning_rate} -> 0.0003' in line
  assert f'--config.model={saved.model}' in line and '\n' not in line
  assert config_lib.differences(now, None) == []
  assert config_lib.differences(now, 'not json') == []
