#!/usr/bin/env bash
# A CUDA dry run on a machine without a GPU: a CUDA build of xtask runs `gpu-check`'s training
# steps against a stand-in CUDA stack (xtask/cuda-dryrun/fake_cuda.c: driver, cuBLAS, cuRAND,
# the runtime, NCCL and cuDNN, every call a success that runs nothing and is counted), so every
# host-side path of the CUDA build runs here (a panic or an error in CUDA-only code shows), and
# xtask/cuda-dryrun/summarize.py prints what one training step asks of the driver and the
# libraries: kernel launches by name, cuDNN and cuBLAS calls, allocations, copies. No value
# computed "on the device" means anything, and a driver call costs nothing here, so the host
# time it prints is dmlp's and candle's own work per step, without the driver's.
#
#   bash .ci/cuda-dryrun.sh                   # BIN=target/release/xtask, 64 × 224², 2 + 10 steps
#   BIN=target/debug/xtask STEPS=3 bash .ci/cuda-dryrun.sh --batch 2 --size 32
#
# BIN must be built with the `cuda` feature (`eval "$(bash .ci/cuda-env.sh)"; cargo build
# --release --features cuda,nccl -p xtask`). WARMUP and STEPS set gpu-check's warm-up and timed
# steps; other arguments go to `gpu-check` (not --warmup or --steps). BUDGET names a file of the
# most each configuration may ask for per step (xtask/cuda-dryrun/budget.json, which CI's
# configuration must keep to); more fails the run. With DRYRUN_DMLP (a CUDA build
# of `dmlp`), it also trains a small model on synthetic data on one stand-in device (stopped
# after an epoch and resumed: page-locked batch uploads, evaluation, checkpoints) and for an
# epoch data parallel on two (NCCL's calls). Values read back are zeros there, so losses print
# as 0 and a data-parallel step sees no gradient (its presence flags read back as 0): the runs
# check that the paths run, not what they compute. What it writes goes to $DRYRUN_DIR (default
# target/cuda-dryrun): calls.jsonl, gpu-check.json, summary.json, train/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${BIN:-target/release/xtask}"
out="${DRYRUN_DIR:-target/cuda-dryrun}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"  # absolute: the run config below names its data folder by this path
lib="$out/lib"
if ! readelf -d "$bin" 2>/dev/null | grep -q 'libcuda.so.1'; then
  echo "cuda-dryrun: $bin is not a CUDA build (it does not load libcuda.so.1); build it with" >&2
  echo '  eval "$(bash .ci/cuda-env.sh)"; cargo build --release --features cuda,nccl -p xtask' >&2
  exit 2
fi
mkdir -p "$lib"
cc -O2 -Wall -Wextra -Werror -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so.1" \
  xtask/cuda-dryrun/fake_cuda.c -lpthread
# The other libraries the binary needs (and cuDNN's, which dmlp loads at run time) are empty
# objects under their names that need the stand-in, where every symbol resolves.
for name in libnccl.so.2 libcurand.so.10 libcublas.so.13 libcublasLt.so.13 libcudart.so.13 \
  libcudnn.so.9 libcudnn_graph.so.9 libcudnn_ops.so.9 libcudnn_cnn.so.9; do
  printf '' | cc -shared -fPIC -x c - -Wl,-soname,"$name" -Wl,--no-as-needed -L"$lib" -l:libcuda.so.1 -o "$lib/$name"
done
rm -f "$out/calls.jsonl"
# The stand-ins carry no symbol versions: the loader warns once per library, which is noise.
FAKE_CUDA_LOG="$out/calls.jsonl" LD_LIBRARY_PATH="$lib" "$bin" gpu-check --device cuda:0 \
  --skip parity,ops,nccl,calls --warmup "${WARMUP:-2}" --steps "${STEPS:-10}" --out "$out/gpu-check.json" "$@" \
  2> >(grep -v 'no version information available' >&2)
python3 xtask/cuda-dryrun/summarize.py "$out/calls.jsonl" "$out/gpu-check.json" --json "$out/summary.json" \
  ${BUDGET:+--budget "$BUDGET"}
# The host's own time per call of each kind (the stand-in's calls cost nothing).
LD_LIBRARY_PATH="$lib" "$bin" gpu-check --device cuda:0 --skip parity,ops,nccl,steps \
  --out "$out/gpu-check-calls.json" 2> >(grep -v 'no version information available' >&2) | grep 'host time per call'
if python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["errors"] else 1)' "$out/gpu-check.json"; then
  echo "cuda-dryrun: gpu-check reported errors (above and in $out/gpu-check.json)" >&2
  exit 1
fi
if [ -n "${DRYRUN_DMLP:-}" ]; then
  echo "== training on the stand-in devices ($DRYRUN_DMLP)"
  train="$out/train"
  rm -rf "$train"
  mkdir -p "$train"
  run() { LD_LIBRARY_PATH="$lib" FAKE_CUDA_LOG="$train/calls.jsonl" "$DRYRUN_DMLP" "$@" 2> >(grep -v 'no version information available' >&2); }
  run data synth --out "$train/data" --groups 1 --per-group 2 --distinct 1 --train-per-class 8 \
    --val-per-class 4 --image-size 24
  cat >"$train/run.toml" <<EOF
[model]
backbone = { type = "resnet", block = "bottleneck", layers = [1, 1, 1, 1], width = 8 }
num_classes = 3
metadata = "geo_temporal"

[model.fusion]
type = "dynamic_mlp_c"

[data]
root = "$train/data"
image_size = 16
workers = 1

[train]
epochs = 2
batch_size = 8
lr = 0.01
warmup_epochs = 0
precision = "bf16"
EOF
  run train --config "$train/run.toml" --run-dir "$train/one" --device cuda:0 --stop-after 1
  run train --config "$train/run.toml" --run-dir "$train/one" --device cuda:0 --resume
  FAKE_CUDA_DEVICES=2 run train --config "$train/run.toml" --run-dir "$train/two" --devices cuda:0,cuda:1 --stop-after 1
fi
