#!/usr/bin/env bash
# Runs `xtask gpu-check` on a GPU machine from the binary .ci/gpu-carry.sh built (carried as
# target/gpu-carry), from the repository root. The binary loads the driver's libcuda.so.1 and
# CUDA 13's runtime libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime; NCCL for an `nccl`
# build) from the NVIDIA wheels of the Python environment, which also runs PyTorch's side.
# The report goes to $OUT/gpu-check.json (the device tool's output folder) or target/.
#
# Then the same training steps at batch 2 × 32², dmlp beside PyTorch (at most HOST_S seconds;
# 0 leaves it out): with so little arithmetic a step's time is the host's cost of its launches
# (kernel lookup, allocation, layouts, the launch itself), the part that bounds bf16 steps.
# Its report goes to gpu-check-host.json beside the first; HOST_AB=1 times them twice more (dmlp
# only): with the vendored candle's kernel and layout caches off (DMLP_CUDA_LAUNCH_CACHE=0,
# gpu-check-host-uncached.json), and with every allocation and free going to the driver
# (DMLP_CUDA_ALLOC_CACHE=0, gpu-check-host-noalloc.json).
#
# Then `smoke-train --device` on the same GPU (at most SMOKE_S seconds; 0 leaves it out): the
# whole training loop (data, fusion heads, evaluation, checkpoints, resume, bf16) on CUDA.
#
#   bash .ci/gpu-check.sh [extra gpu-check flags]
#   (WARMUP, BUDGET_S, DEVICE, PYTHON, LIMIT_S, HOST_S, HOST_AB, SMOKE_S override)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
libs="$("$python" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${libs}:${LD_LIBRARY_PATH:-}"
binary=target/gpu-carry/xtask
[ -x "$binary" ] || gunzip -k "$binary.gz"
if ldd "$binary" | grep "not found"; then
  echo "gpu-check: the libraries above are missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
parity=(--parity xtask/fixtures/parity)
for group in target/gpu-carry/parity/*/; do
  [ -d "$group" ] && parity+=(--parity "$group")
done
out="${OUT:-target}"
common=(gpu-check --device "${DEVICE:-cuda:0}" --python "$python" --warmup "${WARMUP:-2}" --budget-s "${BUDGET_S:-45}")
# The report is rewritten after every part, so a run stopped by the time limit (LIMIT_S) or
# killed by a fault in a library still leaves what it measured. A run killed by a signal (cuDNN
# or the driver crashing the process) runs once more without cuDNN, while the time allows.
limit="${LIMIT_S:-480}"
started=$SECONDS
status=0
timeout -k 10 "$limit" "$binary" "${common[@]}" "${parity[@]}" --out "$out/gpu-check.json" "$@" || status=$?
echo "gpu-check: exit status $status after $((SECONDS - started)) s"
left=$((limit - (SECONDS - started)))
if [ "$status" -gt 128 ] && [ "$status" -ne 137 ] && [ "$left" -gt 120 ]; then
  echo "gpu-check: killed by signal $((status - 128)); once more without cuDNN (DMLP_CUDNN=0), parity left out"
  again=0
  DMLP_CUDNN=0 timeout -k 10 "$left" "$binary" "${common[@]}" --skip parity \
    --out "$out/gpu-check-generic.json" "$@" || again=$?
  echo "gpu-check (without cuDNN): exit status $again"
fi
host="${HOST_S:-120}"
if [ "$host" -gt 0 ]; then
  small=(gpu-check --device "${DEVICE:-cuda:0}" --skip parity,ops,nccl --batch 2 --size 32 --warmup 3 --budget-s 5)
  costs=0
  timeout -k 10 "$host" "$binary" "${small[@]}" --python "$python" --out "$out/gpu-check-host.json" || costs=$?
  echo "gpu-check at batch 2 × 32² (the host's cost per step): exit status $costs"
  if [ "${HOST_AB:-0}" = 1 ]; then
    costs=0
    DMLP_CUDA_LAUNCH_CACHE=0 timeout -k 10 "$host" "$binary" "${small[@]}" --out "$out/gpu-check-host-uncached.json" ||
      costs=$?
    echo "gpu-check at batch 2 × 32², kernels and layouts looked up and uploaded per op: exit status $costs"
    costs=0
    DMLP_CUDA_ALLOC_CACHE=0 timeout -k 10 "$host" "$binary" "${small[@]}" --out "$out/gpu-check-host-noalloc.json" ||
      costs=$?
    echo "gpu-check at batch 2 × 32², every allocation and free from the driver: exit status $costs"
  fi
fi
smoke="${SMOKE_S:-120}"
if [ "$smoke" -gt 0 ]; then
  trained=0
  timeout -k 10 "$smoke" "$binary" smoke-train --device "${DEVICE:-cuda:0}" --out "${TMPDIR:-/tmp}/dmlp-smoke-train" || trained=$?
  echo "smoke-train on ${DEVICE:-cuda:0}: exit status $trained"
  [ "$status" -eq 0 ] && status=$trained
fi
# The check's status first: a crash stays a failure even when the run without cuDNN passed.
exit "$status"
