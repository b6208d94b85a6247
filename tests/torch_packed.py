"""PyTorch's packed LSTM/GRU, the independent reference of the masked layers.

Run by tests/test_masked_rnn.py in a Python that has torch (never jax):
``python tests/torch_packed.py IN.npz OUT.npz``. IN holds the batch-first
inputs ``x`` (B, T, D), ``lengths`` (B,), the layer's ``kind``,
``num_layers``, ``bidirectional``, PyTorch's weights by their parameter names
(``weight_ih_l0``, ``bias_hh_l0_reverse``, ...) and two cotangents. OUT gets
the padded outputs, ``h_n`` and, in float64, the gradients of
``sum(out * cot_out) + sum(h_n * cot_h)`` with respect to ``x`` and to each
weight.
"""

import sys

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def main(src: str, dst: str) -> None:
  a = np.load(src)
  kind = str(a['kind'])
  d, h = a['x'].shape[-1], int(a['hidden_size'])
  rnn = {'lstm': torch.nn.LSTM, 'gru': torch.nn.GRU}[kind](
    d,
    h,
    num_layers=int(a['num_layers']),
    bidirectional=bool(a['bidirectional']),
    batch_first=True,
  ).double()
  with torch.no_grad():
    for name, p in rnn.named_parameters():
      p.copy_(torch.from_numpy(a[name]))
  x = torch.from_numpy(a['x']).double().requires_grad_(True)
  lengths = torch.from_numpy(a['lengths']).long()
  packed = pack_padded_sequence(
    x, lengths, batch_first=True, enforce_sorted=False
  )
  out, state = rnn(packed)
  h_n = state[0] if kind == 'lstm' else state
  out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
  loss = (out * torch.from_numpy(a['cot_out'])).sum()
  loss = loss + (h_n * torch.from_numpy(a['cot_h'])).sum()
  loss.backward()
  grads = {f'grad_{n}': p.grad.numpy() for n, p in rnn.named_parameters()}
  np.savez(
    dst,
    out=out.detach().numpy(),
    h_n=h_n.detach().numpy(),
    grad_x=x.grad.numpy(),
    **grads,
  )


if __name__ == '__main__':
  main(*sys.argv[1:3])
