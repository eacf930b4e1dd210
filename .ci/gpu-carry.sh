#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what a GPU machine without Rust or network needs for
# `xtask gpu-check`: the release xtask built for CUDA 13.0 (stripped and gzipped: 87 MB → 23 MB,
# most of it candle's PTX kernels and polars), and as many of the shared
# parity cases as fit, smallest first, all under target/gpu-carry within the device tool's
# 64 MiB carry limit (the committed cases travel with the tree). Then, on the GPU machine, from
# the repository root: `bash .ci/gpu-check.sh` (see README, "CUDA").
#
#   bash .ci/gpu-carry.sh            # FEATURES=cuda by default; FEATURES=nccl adds NCCL
set -euo pipefail
cd "$(dirname "$0")/.."
features="${FEATURES:-cuda}"
eval "$(bash .ci/cuda-env.sh)"
cargo build --release --features "$features" -p xtask --locked
carry=target/gpu-carry
[ -d "$carry" ] && chmod -R u+w "$carry"
rm -rf "$carry"
mkdir -p "$carry/parity"
strip -o "$carry/xtask" target/release/xtask
gzip -9 "$carry/xtask"
shared="${DMLP_SHARED_DIR:-}"
for candidate in shared ../shared; do
  [ -z "$shared" ] && [ -d "$candidate/fixtures" ] && shared="$candidate"
done
if [ -n "$shared" ]; then
  # Cases smallest first, each with the sibling cases it reads (`../name/...` in its case.json),
  # in their fixture folders' layout, while the carry and the tracked tree that travels with it
  # stay under 62 MiB (the device tool takes 64 MiB a call).
  tree=$(git ls-files -z | xargs -0 cat | wc -c)
  python3 - "$shared/fixtures" "$carry" "$tree" <<'PY'
import json, os, re, shutil, sys
fixtures, carry = sys.argv[1], sys.argv[2]
def size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
used, limit, taken = size(carry), 62 * 2**20 - int(sys.argv[3]), set()
cases = []
for group in ("parity", "parity-baselines", "parity-pretrained"):
    root = os.path.join(fixtures, group)
    if not os.path.isdir(root):
        continue
    for name in sorted(os.listdir(root)):
        spec = os.path.join(root, name, "case.json")
        if os.path.isfile(spec):
            siblings = set(re.findall(r'"\.\./([^/"]+)', open(spec).read()))
            needed = [(group, name)] + [(group, s) for s in sorted(siblings) if os.path.isdir(os.path.join(root, s))]
            cases.append((sum(size(os.path.join(fixtures, g, n)) for g, n in needed), group, name, needed))
for total, group, name, needed in sorted(cases):
    extra = sum(size(os.path.join(fixtures, g, n)) for g, n in needed if (g, n) not in taken)
    if used + extra > limit:
        print(f"gpu-carry: left out {group}/{name} ({extra // 1024} KiB with what it reads): over the carry limit", file=sys.stderr)
        continue
    for g, n in needed:
        if (g, n) not in taken:
            shutil.copytree(os.path.join(fixtures, g, n), os.path.join(carry, "parity", g, n))
            taken.add((g, n))
    used += extra
for d, dirs, files in os.walk(os.path.join(carry, "parity")):
    for entry in dirs + files:
        os.chmod(os.path.join(d, entry), 0o755 if entry in dirs else 0o644)
PY
fi
echo "gpu-carry: $(du -sh "$carry" | cut -f1) in $carry ($(find "$carry/parity" -name case.json | wc -l) shared parity cases)" >&2
