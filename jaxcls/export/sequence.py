"""A sequence run's export: texts as int32 ids, time series as float32 steps.

Its serving function takes ``(x, lengths)``: int32 ids ``(batch, max_len)``
(a text run) or float32 features ``(batch, max_len, C)`` (a series run,
already normalised by the caller), right-padded with zeros to the run's
``max_len`` (fixed), and int32 ``lengths`` ``(batch,)``, each row's real
steps (clipped to ``0..max_len``): what follows a row's length never
changes its outputs. It returns the image export's dict. Encoding is the
caller's: the run's ``inputs.json`` (its word list; a series' channel mean
and std) is copied beside the export, and ``export.json``'s ``input`` says
how to use it. As for images, the variables are constants and jaxcls's CPU
kernels are off while tracing. ONNX takes the same ``(x, lengths)``; a
recurrence jax2onnx cannot convert (the plain ``rnn`` cell's step scan) is
refused in one line.
"""

import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.export import onnx, serving
from jaxcls.export.common import (
  INPUTS_FILE,
  LENGTHS_NAME,
  ONNX_FILE,
  PLATFORMS,
  SAVED_MODEL_DIR,
  SEQUENCE_INPUT_NAMES,
  SERVING_FILE,
  SIGNATURE,
  ExportError,
  sha256,
)
from jaxcls.ops import fastpath

# jaxcls's own XLA custom calls (the CPU kernels), as StableHLO prints them.
_KERNEL_CALL = 'custom_call @jaxcls_'


def kind_of(spec) -> str:
  """``'text'`` (int32 ids) or ``'series'`` (float32 features) of a spec."""
  return 'text' if spec.input_dtype == 'int32' else 'series'


def serving_function(state) -> Callable[[jax.Array, jax.Array], dict]:
  """``(x, lengths) -> {'probabilities', 'logits'}``, variables closed over.

  The model runs in inference mode, on XLA's own ops only; ``lengths`` is
  clipped to ``0..max_len``. Both outputs are float32 ``(batch, classes)``.
  """
  variables = serving.model_variables(state)
  apply_fn = state.apply_fn

  def serve(x: jax.Array, lengths: jax.Array) -> dict:
    lengths = jnp.clip(jnp.asarray(lengths, jnp.int32), 0, x.shape[1])
    # An export runs where jaxcls is not (TF Serving, GPUs): no custom calls.
    with fastpath.disabled():
      logits = apply_fn(variables, x, train=False, lengths=lengths)
    logits = logits.astype(jnp.float32)
    return {'probabilities': jax.nn.softmax(logits, axis=-1), 'logits': logits}

  return serve


def arg_specs(spec, batch) -> tuple[jax.ShapeDtypeStruct, ...]:
  """``(x, lengths)`` of ``batch`` rows (an int, a symbolic or named dim)."""
  dtype = jnp.int32 if kind_of(spec) == 'text' else jnp.float32
  return (
    jax.ShapeDtypeStruct((batch, *spec.image_shape), dtype),
    jax.ShapeDtypeStruct((batch,), jnp.int32),
  )


def export_jax(state, spec, platforms=PLATFORMS) -> jax.export.Exported:
  """The serving function exported for ``platforms``, batch symbolic."""
  (batch,) = jax.export.symbolic_shape('batch')
  fn = jax.jit(serving_function(state))
  return jax.export.export(fn, platforms=platforms)(*arg_specs(spec, batch))


def vocab_size(state) -> int | None:
  """The ids a text model embeds (``0..n-1``); None for a series model."""
  embed = state.params.get('embed')
  return None if embed is None else int(embed['embedding'].shape[0])


def sample(spec, vocab: int | None) -> tuple[np.ndarray, np.ndarray]:
  """A deterministic batch of 4 of lengths 1, max_len, half and 0, each row
  filled to max_len with ids below ``vocab`` (or normal features)."""
  rng = np.random.default_rng(0)
  shape = (4, *spec.image_shape)
  if vocab:
    x = rng.integers(0, vocab, shape, dtype=np.int32)
  else:
    x = rng.normal(size=shape).astype(np.float32)
  n = spec.image_shape[0]
  return x, np.array([1, n, max(n // 2, 1), 0], np.int32)


def check_outputs(call, serve, spec, vocab, what: str) -> None:
  """Raises ExportError unless ``call(x, lengths)`` gives ``serve``'s outputs
  on :func:`sample`'s batch."""
  x, lengths = sample(spec, vocab)
  serving.compare_outputs(call(x, lengths), serve(x, lengths), what)


def _no_kernels(exported: jax.export.Exported) -> None:
  """Raises ExportError if jaxcls's CPU kernels were traced into it."""
  if _KERNEL_CALL in exported.mlir_module():
    raise ExportError(
      f'{SERVING_FILE}: holds a jaxcls CPU kernel (custom call), which '
      'runs nowhere else; export with JAXCLS_KERNELS=off'
    )


def write_jax(state, spec, folder, serve, vocab) -> dict:
  """Writes ``folder/serving.jax``, checked once read back; its entry."""
  exported = export_jax(state, spec)
  _no_kernels(exported)
  path = os.path.join(folder, SERVING_FILE)
  serialized = exported.serialize()
  with open(path, 'wb') as f:
    f.write(serialized)
  reloaded = jax.export.deserialize(serialized)
  check_outputs(reloaded.call, serve, spec, vocab, SERVING_FILE)
  x = SEQUENCE_INPUT_NAMES[kind_of(spec)]
  return {
    'path': SERVING_FILE,
    'sha256': sha256(path),
    'platforms': list(exported.platforms),
    'calling_convention_version': exported.calling_convention_version,
    'load': 'jax.export.deserialize(open(path, "rb").read())'
    f'.call({x}, {LENGTHS_NAME})',
  }


def save_saved_model(state, spec, folder: str, platforms=PLATFORMS) -> None:
  """Writes the serving function as a TF SavedModel into ``folder``: its
  signature takes ``ids`` (or ``features``) and ``lengths``."""
  import tensorflow as tf  # Lazy: only this format needs TensorFlow.
  from jax.experimental import jax2tf

  dims = ', '.join(map(str, spec.image_shape))
  converted = jax2tf.convert(
    serving_function(state),
    polymorphic_shapes=[f'(batch, {dims})', '(batch,)'],
    native_serialization_platforms=platforms,
    with_gradient=False,
  )
  dtype = tf.int32 if kind_of(spec) == 'text' else tf.float32
  name = SEQUENCE_INPUT_NAMES[kind_of(spec)]
  signature = [
    tf.TensorSpec((None, *spec.image_shape), dtype, name=name),
    tf.TensorSpec((None,), tf.int32, name=LENGTHS_NAME),
  ]
  serving.save_tf_module(converted, signature, folder)


def write_saved_model(state, spec, folder, serve, vocab, versions) -> dict:
  """Writes ``folder/saved_model``, checked once loaded; its entry (and
  TensorFlow's version in ``versions``)."""
  import tensorflow as tf

  path = os.path.join(folder, SAVED_MODEL_DIR)
  save_saved_model(state, spec, path)
  signature = tf.saved_model.load(path).signatures[SIGNATURE]
  name = SEQUENCE_INPUT_NAMES[kind_of(spec)]

  def call(x, lengths):
    feed = {name: tf.constant(x), LENGTHS_NAME: tf.constant(lengths)}
    return signature(**feed)

  check_outputs(call, serve, spec, vocab, SAVED_MODEL_DIR)
  versions['tensorflow'] = tf.__version__
  return {
    'path': SAVED_MODEL_DIR,
    'sha256': sha256(os.path.join(path, 'saved_model.pb')),
    'platforms': list(PLATFORMS),
    'signature': SIGNATURE,
    'xla_call_module_version': (
      jax.config.jax_export_calling_convention_version
    ),
    'load': f'tf.saved_model.load(path).signatures["{SIGNATURE}"]'
    f'({name}={name}, {LENGTHS_NAME}=lengths)',
  }


def add_onnx(meta, state, spec, folder, serve, vocab, alone: bool) -> None:
  """Tries model.onnx, as :func:`.onnx.record` records it (or refuses it
  in one line, when ``alone``)."""
  name = SEQUENCE_INPUT_NAMES[kind_of(spec)]
  what = f"the {meta['model']} model's recurrence (lax.scan, batch symbolic)"

  def write_file() -> dict:
    onnx.require('onnxruntime')  # Before the conversion's seconds are spent.
    specs = arg_specs(spec, 'batch')
    model = onnx.to_onnx(serve, specs, [name, LENGTHS_NAME], what)
    check = lambda call: check_outputs(call, serve, spec, vocab, ONNX_FILE)
    feed = f'{{"{name}": {name}, "{LENGTHS_NAME}": lengths}}'
    return onnx.save(model, folder, check, feed)

  onnx.record(meta, write_file, alone)


def _tokenizer(inputs: dict, vocab: int | None) -> dict:
  """How a text run turned texts into ids, for ``export.json``."""
  if inputs['tokens'] == 'bytes':
    found = {'tokens': 'bytes', 'ids': 'each UTF-8 byte b is id b + 2'}
  else:
    found = {
      'tokens': 'words',
      'ids': "the lower-cased words (Python's re \\w+, Unicode) of the "
      f"text: a word at index i of {INPUTS_FILE}'s 'words' is id i + 2, "
      'any other word 1 (unknown)',
    }
  found.update(vocab_size=vocab, pad_id=0)
  found['email_headers'] = (
    'kept'
    if inputs.get('email_headers', True)
    else 'dropped first: all up to the first blank line, but the Subject'
  )
  found['encode'] = (
    'jaxcls.training.inspection.encode_texts(inputs, texts), inputs: '
    f'json.load(open("{INPUTS_FILE}"))'
  )
  return found


def input_metadata(inputs: dict, spec, vocab: int | None) -> dict:
  """``export.json``'s ``input`` of a sequence run (``inputs``: its
  ``inputs.json``; ``vocab``: :func:`vocab_size`)."""
  kind = kind_of(spec)
  max_len = int(spec.image_shape[0])
  meta = {
    'kind': kind,
    'name': SEQUENCE_INPUT_NAMES[kind],
    'shape': [None, *spec.image_shape],
    'dtype': 'int32' if kind == 'text' else 'float32',
    'max_len': max_len,
    'padding': f'right-padded with 0 to max_len {max_len} (fixed; longer '
    'sequences cut to their first max_len steps); steps at or after a '
    "row's length never change its outputs",
    'lengths': {
      'name': LENGTHS_NAME,
      'shape': [None],
      'dtype': 'int32',
      'values': "each row's real steps, 0..max_len",
    },
  }
  if kind == 'text':
    meta['tokenizer'] = _tokenizer(inputs, vocab)
  else:
    meta['channels'] = int(spec.image_shape[1])
    meta['normalised'] = (
      'by the caller: (x - mean) / std per channel, with the mean and std '
      f"of {INPUTS_FILE} (the training steps'); padding stays 0"
    )
  return meta


def write_files(meta, state, spec, inputs, folder, formats) -> None:
  """Writes ``inputs.json`` and the ``formats`` asked for into ``folder``,
  describing them in ``meta`` (``export.json``: its ``input`` replaced)."""
  vocab = vocab_size(state)
  meta['input'] = input_metadata(inputs, spec, vocab)
  path = os.path.join(folder, INPUTS_FILE)
  with open(path, 'w') as f:
    json.dump(inputs, f)
  meta['input']['inputs_file'] = {'path': INPUTS_FILE, 'sha256': sha256(path)}
  serve = jax.jit(serving_function(state))
  files = meta['files']
  if 'jax' in formats:
    files['jax'] = write_jax(state, spec, folder, serve, vocab)
  if 'saved_model' in formats:
    files['saved_model'] = write_saved_model(
      state, spec, folder, serve, vocab, meta['versions']
    )
  if 'onnx' in formats:
    alone = set(formats) == {'onnx'}  # Else skipped if not convertible.
    add_onnx(meta, state, spec, folder, serve, vocab, alone)
