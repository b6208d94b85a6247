#!/usr/bin/env bash
# The whole benchmark on a GPU machine, in a few minutes; prints the table.
#
#   On a machine with TFDS:   python -m benchmarks.export_arrays --out=fm.npz
#                             (and --dataset=mnist --out=mnist.npz for 99%)
#   On the GPU machine:       DATA_NPZ=fm.npz MNIST_NPZ=mnist.npz \
#                               bash benchmarks/gpu.sh
#   Dry run on a CPU:         DRY_RUN=1 bash benchmarks/gpu.sh
#
# Needs jax with CUDA (`jax[cuda12]`, same version as requirements.txt) and,
# for the reference, torch with CUDA, plus jaxcls's own needs (flax, optax,
# orbax-checkpoint, ml_collections; TensorFlow only without DATA_NPZ).
# jaxcls_cudnn is the LSTM on cuDNN (jaxcls.accel.cudnn_lstm); for the CNN and
# GRU it repeats jaxcls. Without DATA_NPZ the data come from
# TFDS. MNIST_NPZ (any MNIST-sized arrays) adds the seconds of training to
# reach 99% test accuracy. Tables go to benchmarks/results/gpu_*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
common=(--runners="${RUNNERS:-jaxcls,jaxcls_cudnn,jaxcls_bf16,torch,torch_lean}")
if [[ -n "${DRY_RUN:-}" ]]; then
  # Tiny and CPU-only: checks that the script runs end to end.
  common+=(--train_examples=1280 --min_epochs=1)
  fm=(--max_epochs=1 --rnn_epochs=1)
  mnist=(--max_epochs=1)
else
  fm=(--max_epochs=15 --rnn_epochs=5)
  mnist=(--max_epochs=15)
fi
$PYTHON -c 'import jax; print("jax devices:", jax.devices())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total \
  --format=csv,noheader || true
data=()
[[ -n "${DATA_NPZ:-}" ]] && data=(--data_npz="$DATA_NPZ")
$PYTHON -m benchmarks.train_speed "${common[@]}" "${fm[@]}" "${data[@]}" \
  --target=0.91 --out=benchmarks/results/gpu_fashion_mnist.json
if [[ -n "${MNIST_NPZ:-}" ]]; then
  $PYTHON -m benchmarks.train_speed "${common[@]}" "${mnist[@]}" \
    --models=cnn --data_npz="$MNIST_NPZ" --target=0.99 \
    --out=benchmarks/results/gpu_mnist.json
fi
