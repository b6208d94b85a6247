"""The ``export`` command: a workdir's best checkpoint, exported for serving.

:func:`main` runs ``jaxcls.export.export_workdir`` for the chosen formats
and prints one line per file written (and a ``warning:`` line per format
skipped). :data:`USAGE` is the ``--help`` text; ``python -m
experiments.export`` and ``jaxcls-export`` run :func:`run`.
"""

import sys

from absl import flags

from jaxcls.commands import cli

FLAGS = flags.FLAGS

# What --help prints: absl shows the __main__ module's docstring, and
# experiments.export takes this as its own.
USAGE = """\
Export the best checkpoint of a workdir for serving without jaxcls.

Run:  python -m experiments.export --workdir=runs/fashion_mnist \
        [--format=all|jax|saved_model|onnx]

Writes ``W/export/``:

* ``serving.jax``: ``jax.export`` StableHLO for CPU and CUDA;
  ``jax.export.deserialize(bytes).call(images)`` takes uint8 images
  ``(batch, H, W, C)`` of any batch size and returns ``{'probabilities',
  'logits'}``, float32 ``(batch, num_classes)``;
* ``saved_model/``: a TensorFlow SavedModel (jax2tf) whose
  ``serving_default`` signature takes ``images`` and returns the same dict;
* ``model.onnx``: ONNX (jax2onnx, opset 21) for onnxruntime: input
  ``images``, outputs ``probabilities`` and ``logits``;
* ``export.json``: class names, input shape and dtype, config fingerprint,
  test accuracy, versions and the artifacts' sha256.

A sequence run (``spam_assassin``, ``text_folder``, ``ucr/<Name>``) is
served on ``(ids, lengths)``: int32 ids ``(batch, max_len)`` (float32
``features`` ``(batch, max_len, C)`` for a time series, normalised by the
caller), right-padded with 0 to the run's ``max_len``, and int32 lengths
``(batch,)``; the SavedModel's signature takes both. ``inputs.json`` (its
word list, or channel mean and std) is copied beside them, and
``export.json``'s ``input`` says how to encode. jax2onnx 0.12.5 cannot
convert its recurrence: ``--format=onnx`` is then an error, and
``--format=all`` writes the other two with a warning.

The folder is written whole (built aside, checked against the model, then
moved into place), so it holds the formats of the last export only.
A model that cannot be converted to ONNX prints one ``warning: ...`` line
under ``--format=all`` and the other formats are written; with
``--format=onnx`` that is an error.
``python -m experiments.predict --exported=W/export image.png`` predicts
from it. A missing checkpoint or an unusable workdir prints ``error: ...``
on one line and exits with status 2.
"""


def define_flags() -> None:
  """Defines ``--workdir`` and ``--format`` (by :func:`run`)."""
  # Disclaimed: absl then files the flags under the first caller outside
  # this module, the __main__ module (experiments.export), whose flags
  # --help lists.
  flags.disclaim_key_flags()
  flags.DEFINE_string(
    'workdir', None, 'The training workdir (its best checkpoint is exported).'
  )
  flags.DEFINE_enum(
    'format',
    'all',
    ['all', 'jax', 'saved_model', 'onnx'],
    'Which artifacts to write.',
  )


def main(argv):
  """The absl main: checks the command line, exports, prints the files."""
  if len(argv) > 1 or not FLAGS.workdir:
    problem = (
      f'unexpected arguments {argv[1:]}'
      if len(argv) > 1
      else '--workdir is required'
    )
    cli.fail(
      f'{problem}; use --workdir=W (the folder training wrote to) '
      '[--format=all|jax|saved_model|onnx]'
    )
  from jaxcls import export

  formats = export.FORMATS if FLAGS.format == 'all' else (FLAGS.format,)
  folder, meta = export.export_workdir(FLAGS.workdir, formats)
  _print_written(folder, meta)


def _takes(meta: dict) -> str:
  """What the export's functions take, for the lines printed."""
  given = meta['input']
  shape = ', '.join(map(str, given['shape'][1:]))
  if given.get('kind', 'image') == 'image':
    return f'uint8 (batch, {shape})'
  lengths = given['lengths']['name']
  return (
    f'{given["dtype"]} {given["name"]} (batch, {shape}), int32 {lengths} '
    '(batch,)'
  )


def _print_written(folder: str, meta: dict) -> None:
  """A line per file written into ``folder`` (``meta``: its export.json),
  then a ``warning:`` line (stderr) per format skipped."""
  takes = _takes(meta)
  for fmt, entry in meta['files'].items():
    suffix = '/' if fmt == 'saved_model' else ''
    runs_on = (
      f'opset {entry["opset"]}, onnxruntime'
      if fmt == 'onnx'
      else f'platforms {", ".join(entry["platforms"])}'
    )
    print(
      f'wrote {folder}/{entry["path"]}{suffix} ({fmt}: {takes} -> '
      f'probabilities, logits; {runs_on})'
    )
  inputs = meta['input'].get('inputs_file')
  if inputs:
    print(f'wrote {folder}/{inputs["path"]} (how the run encoded its inputs)')
  for reason in meta.get('skipped', {}).values():
    print(f'warning: {" ".join(reason.split())}', file=sys.stderr)
  accuracy = meta.get('test_accuracy')
  print(
    f'wrote {folder}/export.json ({meta["dataset"]} {meta["model"]}, '
    f'checkpoint step {meta["checkpoint_step"]}, test accuracy '
    f'{"unknown" if accuracy is None else f"{accuracy:.4f}"})'
  )


def run() -> None:
  """The command: defines the flags and runs :func:`main` on ``sys.argv``."""
  define_flags()
  cli.app_run(main)
