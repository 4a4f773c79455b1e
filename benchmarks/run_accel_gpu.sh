#!/usr/bin/env bash
# The GPU runs behind RESULTS.md's accelerator section, as one script for a lent machine that has
# jax with CUDA but not this package: the package is put on PYTHONPATH from the checkout, and the
# tokenizers come from ACCEL_DIR (tiny.en's and a multilingual one, copied from the offline
# packages: .accel/tiny.en/tokenizer.json, .accel/base/tokenizer.json). Records go to OUT_DIR.
#   benchmarks/run_accel_gpu.sh [OUT_DIR] [ACCEL_DIR]
set -uo pipefail
out=${1:-/tmp/accel} accel=${2:-.accel}
mkdir -p "$out" /tmp/site/whisper_nnx
ln -sfn "$PWD/engine" /tmp/site/whisper_nnx/engine
ln -sfn "$PWD/sharding" /tmp/site/whisper_nnx/sharding
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$py -c "import jax, flax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'numpy', numpy.__version__, jax.devices())"
run() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" $py "$@" 2>&1 | tee "$out/$name.log"; }
run accel-tiny.en 150 benchmarks/bench_accel.py --device "${DEVICE:-gpu}" --model tiny.en --batch-sizes 64,256 \
    --tokenizer "$accel/tiny.en/tokenizer.json" --out "$out/accel-tiny.en.json"
run accel-large-v3 280 benchmarks/bench_accel.py --device "${DEVICE:-gpu}" --model large-v3 --batch-sizes 64,256 --repeats 2 \
    --tokenizer "$accel/base/tokenizer.json" --out "$out/accel-large-v3.json"
run roofline-large-v3 150 benchmarks/bench_roofline.py --device "${DEVICE:-gpu}" --weights random --model large-v3 \
    --model-dtype bfloat16 --batch-sizes 256 --steps 100 --repeats 2 --dtypes bfloat16 --matmul-sizes 8192 \
    --matvec-mib 2048 --ceiling-repeats 5
cp "$(ls -t benchmarks/results/roofline-*.json | head -1)" "$out/" 2>/dev/null
ls -la "$out"
