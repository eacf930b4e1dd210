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
# A binary links against the driver and the runtime libraries (candle builds cudarc with
# `dynamic-linking`: -lcuda -lnvrtc -lcublas -lcublasLt -lcurand, -lnccl with the `nccl`
# feature, and candle-kernels -lcudart). The wheels ship only versioned names (libcublas.so.13),
# no driver, and NCCL only in a 200 MB wheel: the link folder holds the unversioned names, and
# stubs for libcuda.so (SONAME libcuda.so.1) and libnccl.so (SONAME libnccl.so.2) whose every
# function, as cudarc declares them, is an empty one, as the CUDA toolkit's stubs/ folder does.
# At run time the binary loads the GPU machine's real libcuda.so.1 (its driver), and the .so.13
# libraries and libnccl.so.2 from LD_LIBRARY_PATH (PyTorch's NVIDIA wheels hold them).
link="$dir/link"
if [ ! -e "$link/libnccl.so" ]; then
  mkdir -p "$link"
  for lib in cudart.so.13 nvrtc.so.13 cublas.so.13 cublasLt.so.13 curand.so.10; do
    ln -sf "$root/lib/lib$lib" "$link/lib${lib%.so.*}.so"
  done
  # cudarc's driver bindings, as Cargo.lock pins them.
  cudarc_src="$(cargo metadata --format-version 1 --locked --all-features 2>/dev/null | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))')"
  stub() { # stub NAME SONAME BINDINGS PATTERN
    grep -oE "pub (unsafe )?fn $4[A-Za-z0-9_]*" "$cudarc_src/src/$3/sys/mod.rs" | awk '{print $NF}' | sort -u \
      | sed 's/.*/void &(void) {}/' > "$link/$1_stub.c"
    cc -shared -fPIC -Wl,-soname,"$2" -o "$link/lib$1.so" "$link/$1_stub.c"
  }
  stub cuda libcuda.so.1 driver "cu[A-Z]"
  stub nccl libnccl.so.2 nccl "nccl"
fi
"$root/bin/nvcc" --version | tail -n 2 >&2
echo "export CUDA_ROOT='$root' CUDA_PATH='$root' CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
echo "export PATH='$root/bin':\"\$PATH\""
echo "export LIBRARY_PATH='$link':\"\${LIBRARY_PATH:-}\""
echo "export LD_LIBRARY_PATH='$root/lib':\"\${LD_LIBRARY_PATH:-}\""
