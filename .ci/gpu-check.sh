#!/usr/bin/env bash
# Runs `xtask gpu-check` on a GPU machine from the binary .ci/gpu-carry.sh built (carried as
# target/gpu-carry), from the repository root. The binary loads the driver's libcuda.so.1 and
# CUDA 13's runtime libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime; NCCL for an `nccl`
# build) from the NVIDIA wheels of the Python environment, which also runs PyTorch's side.
# The report goes to $OUT/gpu-check.json (the device tool's output folder) or target/.
#
#   bash .ci/gpu-check.sh [extra gpu-check flags]   (WARMUP, BUDGET_S, DEVICE, PYTHON override)
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
exec "$binary" gpu-check --device "${DEVICE:-cuda:0}" --python "$python" "${parity[@]}" \
  --warmup "${WARMUP:-2}" --budget-s "${BUDGET_S:-45}" --out "$out/gpu-check.json" "$@"
