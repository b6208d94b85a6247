"""The article's PyTorch training code, as the benchmark's reference.

The CNN and the loop are the article's (conv 16 3x3 pad 1, relu, maxpool 2,
conv 32, relu, maxpool 2, fc 128, relu, fc 10; ``CrossEntropyLoss``, Adam with
its default learning rate, batch 64, eager mode), sized for 28x28x1 images.
The recurrent references are ``nn.LSTM`` / ``nn.GRU`` over image rows with the
last hidden state fed to a Linear layer. Data come from the same in-memory
uint8 arrays as jaxcls's, normalised as the article's
``Normalize((0.5,), (0.5,))``: ``(x / 255 - 0.5) / 0.5``.

torch is an optional benchmark requirement (benchmarks/requirements-torch.txt),
never a jaxcls dependency.

Two loops train it: :class:`Trainer` is the article's (per-batch
normalisation of uint8 slices, a ``loss.item()`` host sync every step), and
:class:`LeanTrainer` is the lean loop a speed-minded PyTorch user writes (the
split as one normalised tensor, no per-step sync).
"""

import time

import numpy as np
import torch
from torch import nn


class ArticleCNN(nn.Module):
  """The article's CNN; ``fc1`` takes 32 * 7 * 7 features for 28x28 input."""

  def __init__(
    self, in_channels: int = 1, size: int = 28, num_classes: int = 10
  ):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1)
    self.relu1 = nn.ReLU()
    self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
    self.conv2 = nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1)
    self.relu2 = nn.ReLU()
    self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
    self.flat = 32 * (size // 4) * (size // 4)
    self.fc1 = nn.Linear(self.flat, 128)
    self.relu3 = nn.ReLU()
    self.fc2 = nn.Linear(128, num_classes)

  def forward(self, x):
    x = self.pool1(self.relu1(self.conv1(x)))
    x = self.pool2(self.relu2(self.conv2(x)))
    # The article's x.view(-1, 32*8*8); reshape, since with one input
    # channel torch may pick a channels-last layout that view rejects.
    x = x.reshape(-1, self.flat)
    return self.fc2(self.relu3(self.fc1(x)))


class RowRNN(nn.Module):
  """``nn.LSTM``/``nn.GRU`` over the rows of an image; last state -> Linear."""

  def __init__(
    self, kind: str, width: int = 28, hidden: int = 128, num_classes: int = 10
  ):
    super().__init__()
    rnn = {'lstm': nn.LSTM, 'gru': nn.GRU}[kind]
    self.rnn = rnn(width, hidden, batch_first=True)
    self.fc = nn.Linear(hidden, num_classes)

  def forward(self, x):  # x: (B, 1, H, W) -> a sequence of H rows.
    _, state = self.rnn(x[:, 0])
    h = state[0] if isinstance(state, tuple) else state
    return self.fc(h[-1])


def build(model_name: str, image_shape: tuple[int, int, int]) -> nn.Module:
  """The reference for ``model_name`` ('cnn', 'lstm' or 'gru')."""
  h, w, c = image_shape
  if model_name == 'cnn':
    return ArticleCNN(c, h)
  if c != 1:
    raise ValueError(f'the row RNN reference needs 1 channel, got {c}')
  return RowRNN(model_name, w)


def to_tensor(images: np.ndarray) -> torch.Tensor:
  """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W), as the article."""
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  return (x.float() / 255.0 - 0.5) / 0.5


class Trainer:
  """The article's loop: one ``train_epoch`` per epoch, timed by the caller."""

  def __init__(
    self, model_name: str, image_shape, seed: int = 0, device: str = 'cpu'
  ):
    torch.manual_seed(seed)
    self.device = torch.device(device)
    self.model = build(model_name, image_shape).to(self.device)
    self.criterion = nn.CrossEntropyLoss()
    self.optimizer = torch.optim.Adam(self.model.parameters())

  def _sync(self):
    if self.device.type == 'cuda':
      torch.cuda.synchronize()

  def train_epoch(
    self,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
  ) -> dict:
    """Trains one epoch in ``order``; returns seconds and training accuracy.

    Batches are sliced from the host arrays and normalised per batch, as the
    article's DataLoader + ToTensor + Normalize do (without worker processes).
    """
    self.model.train()
    correct = total = 0
    running_loss = 0.0
    self._sync()
    start = time.perf_counter()
    for i in range(len(order) // batch_size):
      rows = order[i * batch_size : (i + 1) * batch_size]
      inputs = to_tensor(images[rows]).to(self.device)
      targets = torch.from_numpy(labels[rows].astype(np.int64)).to(self.device)
      self.optimizer.zero_grad()
      outputs = self.model(inputs)
      loss = self.criterion(outputs, targets)
      loss.backward()
      self.optimizer.step()
      running_loss += loss.item()  # The article syncs here every step.
      predicted = outputs.detach().argmax(1)
      total += targets.size(0)
      correct += (predicted == targets).sum().item()
    self._sync()
    return {
      'seconds': time.perf_counter() - start,
      'images': total,
      'accuracy': correct / max(total, 1),
    }

  @torch.no_grad()
  def accuracy(
    self, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000
  ) -> float:
    self.model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
      x = to_tensor(images[start : start + batch_size]).to(self.device)
      y = torch.from_numpy(labels[start : start + batch_size].astype(np.int64))
      correct += (self.model(x).argmax(1).cpu() == y).sum().item()
    return correct / len(labels)

  def peak_memory_bytes(self) -> int | None:
    if self.device.type == 'cuda':
      return int(torch.cuda.max_memory_allocated(self.device))
    return None


class LeanTrainer(Trainer):
  """The loop a PyTorch user who cares about speed writes.

  The same model, loss, optimizer and batches as :class:`Trainer`, but the
  whole training split is normalised once into one float tensor on the
  device (kept between epochs), batches are index-selected from it, and the
  loss and accuracy are summed on the device: no ``.item()`` host sync per
  step, one at the end of the epoch.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._cache = None

  def _split(self, images: np.ndarray, labels: np.ndarray):
    if self._cache is None or self._cache[0] is not images:
      x = to_tensor(images).to(self.device)
      y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
      self._cache = (images, x, y)
    return self._cache[1:]

  def train_epoch(
    self,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
  ) -> dict:
    x, y = self._split(images, labels)  # Once per run, outside the timing.
    self.model.train()
    steps = len(order) // batch_size
    rows = torch.from_numpy(
      np.asarray(order[: steps * batch_size], np.int64)
    ).to(self.device)
    loss_sum = torch.zeros((), device=self.device)
    correct = torch.zeros((), dtype=torch.int64, device=self.device)
    self._sync()
    start = time.perf_counter()
    for i in range(steps):
      index = rows[i * batch_size : (i + 1) * batch_size]
      inputs, targets = x[index], y[index]
      self.optimizer.zero_grad(set_to_none=True)
      outputs = self.model(inputs)
      loss = self.criterion(outputs, targets)
      loss.backward()
      self.optimizer.step()
      loss_sum += loss.detach()
      correct += (outputs.detach().argmax(1) == targets).sum()
    total = steps * batch_size
    accuracy = correct.item() / max(total, 1)  # The one sync of the epoch.
    self._sync()
    return {
      'seconds': time.perf_counter() - start,
      'images': total,
      'accuracy': accuracy,
      'loss': loss_sum.item() / max(steps, 1),
    }


def threads() -> dict:
  return {
    'intra_op': torch.get_num_threads(),
    'inter_op': torch.get_num_interop_threads(),
  }
