#!/usr/bin/env bash
# GPU checks on the accelerator machine (docs/gpu.md, docs/performance.md).
# Expects the dsocr binary (built here with `cargo build --profile gpu -p dsocr-cli --features cuda,wgpu`,
# compressed to .carry/dsocr.xz) and, for WGPU, the Vulkan loader debs in .gl/.
# Usage: bench/gpu_run.sh parity|bench|all   (writes logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BIN=/tmp/dsocr
[ -x "$BIN" ] || xz -dc .carry/dsocr.xz > "$BIN" && chmod +x "$BIN"
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" / 2>/dev/null; done; ldconfig; fi
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
# A pre-warmed CubeCL cache carried from an earlier call, if any.
if [ -f .carry/cubecl-cache.tar.gz ]; then mkdir -p ~/.cache && tar -xzf .carry/cubecl-cache.tar.gz -C ~/.cache; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
FIX=tests/fixtures/reference-tiny
step() { # name, command...
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  local t1=$EPOCHREALTIME
  printf '%-28s rc=%d  %s s\n' "$name" $rc "$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")" | tee -a "$OUT/summary.txt"
  tail -3 "$OUT/$name.log" | sed 's/^/    /'
}
case "${1:-all}" in
parity|all)
  step cuda-f32-cold   $BIN debug parity --fixture $FIX --device cuda --precision f32
  step cuda-f32-warm   $BIN debug parity --fixture $FIX --device cuda --precision f32
  step cuda-bf16       $BIN debug parity --fixture $FIX --device cuda --precision bf16
  step wgpu-f32        $BIN debug parity --fixture $FIX --device wgpu --precision f32
  step wgpu-f16        $BIN debug parity --fixture $FIX --device wgpu --precision f16
  ;;&
bench|all)
  mkdir -p /tmp/full
  step bench-cuda-bf16 $BIN bench --model /tmp/full --device cuda --precision bf16 --json "$OUT/bench-cuda.json"
  step torch-bf16      env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --json "$OUT/torch.json"
  ;;
esac
tar -czf "$OUT/cubecl-cache.tar.gz" -C ~/.cache cubecl 2>/dev/null || true
