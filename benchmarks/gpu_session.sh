#!/usr/bin/env bash
# Everything a lent GPU machine should run for jaxcls, as one command that
# fits one device call (~7 min on an H100): versions, the GPU tests, the
# whole of benchmarks/gpu.sh, then the portable test files (with GPU
# determinism on, so the bit-for-bit feed tests run too).
#
# Prepare on a machine with the data and pip (the GPU machine has neither):
#   python -m benchmarks.export_arrays --out=.gpu/fm.npz
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .gpu/wheels ml_collections==1.1.0 \
#     tensorboardx==2.6.5        # what the GPU image lacks (KINDS.md)
#   echo /.gpu/ >> .git/info/exclude
# Then one device call: `bash benchmarks/gpu_session.sh`, carrying .gpu.
# Files land in $OUT (or ./gpu_out): gpu.txt, the test logs, bench.txt and
# gpu_fashion_mnist.json.
set -u
cd "$(dirname "$0")/.."
T0=$SECONDS
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.gpu/wheels}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site "$WHEELS"/*.whl 2>&1 | tail -1
  export PYTHONPATH=.:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import sys, jax, flax, optax, torch; print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__, jax.devices())' 2>&1 | tee -a "$OUT/gpu.txt"
python3 -c 'import jax.numpy as jnp; from jaxcls.accel import cpu_conv, cpu_rnn; print("why no CPU kernel on this backend:", cpu_rnn.why_not(jnp.float32, 128), "/", cpu_conv.why_not((8, 28, 28, 1), 16, jnp.float32))' 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_cudnn_lstm.py > "$OUT/pytest_cudnn.txt" 2>&1
echo "cudnn tests rc $?"; tail -2 "$OUT/pytest_cudnn.txt"
RUNNERS=${RUNNERS:-jaxcls,jaxcls_cudnn,jaxcls_bf16,torch,torch_lean} \
  DATA_NPZ=${DATA_NPZ:-.gpu/fm.npz} PYTHON=python3 \
  timeout 330 bash benchmarks/gpu.sh > "$OUT/bench.txt" 2>&1
echo "bench rc $? after $((SECONDS - T0)) s"
cp benchmarks/results/gpu_fashion_mnist.json "$OUT/" 2>/dev/null
tail -40 "$OUT/bench.txt"
left=$((560 - (SECONDS - T0)))
if ((left > 40)); then
  # The test files that need neither TFDS nor TensorFlow.
  XLA_FLAGS=--xla_gpu_deterministic_ops=true timeout $left python3 -m pytest \
    -q -p no:cacheprovider -n 4 -rf tests/test_models.py \
    tests/test_train_step.py tests/test_kernels.py tests/test_activations.py \
    tests/test_optim.py tests/test_resnet.py tests/test_feed.py \
    tests/test_cpu_conv.py tests/test_cpu_rnn.py tests/test_accel.py \
    > "$OUT/pytest_gpu.txt" 2>&1
  echo "portable tests rc $?"; tail -8 "$OUT/pytest_gpu.txt"
fi
