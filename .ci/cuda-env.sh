#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler and the runtime libraries candle's CUDA build needs from
# NVIDIA's PyPI wheels (no system CUDA, no root), then prints the environment to build with:
#
#   eval "$(bash .ci/cuda-env.sh)"
#   cargo check --features cuda -p dmlp-cli -p xtask
#
# CUDA 13.0 because the GPU machines this project uses run driver 580, which loads 13.0 code and
# not 13.2's. Every wheel is pinned to 13.0: unpinned, pip pulls nvvm and crt 13.5 beside nvcc
# 13.0, and ptxas then rejects the PTX cicc writes ("Unsupported .version 9.5").
# The folder defaults to ~/.cache/dmlp/cuda-13.0 (DMLP_CUDA_DIR overrides it); a second run
# reuses it. CUDA_COMPUTE_CAP defaults to 90 (H100/H200).
set -euo pipefail

dir="${DMLP_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dmlp/cuda-13.0}"
stamp="$dir/.installed-13.0"
if [ ! -f "$stamp" ]; then
  mkdir -p "$dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore --target "$dir" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" >&2
  touch "$stamp"
fi
root="$dir/nvidia/cu13"
# candle-kernels links `-lcudart` (its static MoE kernels call the runtime), and the wheel ships
# only `libcudart.so.13`: a link folder with the unversioned name lets a binary link here. At run
# time the binary loads `libcudart.so.13` (and, through cudarc, cuBLAS, cuRAND and the driver)
# from LD_LIBRARY_PATH.
link="$dir/link"
if [ ! -e "$link/libcudart.so" ]; then
  mkdir -p "$link"
  ln -sf "$root/lib/libcudart.so.13" "$link/libcudart.so"
fi
"$root/bin/nvcc" --version | tail -n 2 >&2
echo "export CUDA_ROOT='$root' CUDA_PATH='$root' CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
echo "export PATH='$root/bin':\"\$PATH\""
echo "export LIBRARY_PATH='$link':\"\${LIBRARY_PATH:-}\""
echo "export LD_LIBRARY_PATH='$root/lib':\"\${LD_LIBRARY_PATH:-}\""
