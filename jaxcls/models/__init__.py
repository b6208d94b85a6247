"""Classification models as Flax linen modules, and the registry by name.

The article's CNN (:mod:`.cnn`), a small ResNet (:mod:`.resnet`), and RNN,
LSTM and GRU classifiers over image rows (:mod:`.recurrent`, with the cells
in :mod:`.rnn_cells` and the fused kernels in :mod:`.fused_rnn`), and a
classifier of texts and time series with lengths (:mod:`.sequence`).

Every model maps a float batch ``(B, H, W, C)`` to float32 logits
``(B, num_classes)`` and takes ``train`` (dropout and BatchNorm). Dropout
needs a ``'dropout'`` PRNG key when ``train=True``; a model with BatchNorm
returns its new ``batch_stats`` under ``mutable=['batch_stats']``.

:data:`MODELS` maps ``config.model`` to a builder ``(config, num_classes) ->
module``. It is written out here, so a model exists because it is listed,
not because some module was imported.
"""

import flax.linen as nn

from jaxcls.models import cnn, recurrent, resnet, sequence
from jaxcls.models.cnn import CNN, conv_relu_pool, nan_max_pool_2x2, pool_2x2
from jaxcls.models.resnet import ResNet
from jaxcls.ops.kernels import max_pool_2x2

MODELS = {
  'cnn': cnn.build_cnn,
  'resnet': resnet.build_resnet,
  'rnn': recurrent.build_classifier,
  'lstm': recurrent.build_classifier,
  'gru': recurrent.build_classifier,
  'sequence': sequence.build_sequence,
}


def create_model(config, num_classes: int) -> nn.Module:
  """The model named ``config.model``, for ``num_classes`` classes.

  Args:
    config: a config from :func:`jaxcls.get_config` (``model`` and the
      fields of that model).
    num_classes: the width of the logits.

  Returns:
    An uninitialised Flax linen module.
  """
  try:
    build = MODELS[config.model]
  except KeyError:
    raise ValueError(
      f'unknown model {config.model!r}; choose one of {sorted(MODELS)}'
    ) from None
  return build(config, num_classes)


__all__ = [
  'CNN',
  'MODELS',
  'ResNet',
  'conv_relu_pool',
  'create_model',
  'max_pool_2x2',
  'nan_max_pool_2x2',
  'pool_2x2',
]
