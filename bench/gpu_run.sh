#!/usr/bin/env bash
# GPU checks on the accelerator machine (docs/gpu.md, docs/performance.md).
# Expects the dsocr binary (built here with `cargo build --profile gpu -p dsocr-cli --features cuda,wgpu`,
# compressed to .carry/dsocr.xz) and, for WGPU, the Vulkan loader and GL dispatch debs in .gl/ (docs/gpu.md).
# Usage: [LIMIT=s] [REPEAT=n] [FRESH=1] bench/gpu_run.sh parity|bench|serve|all   (writes logs under $OUT)
# serve: pages/s of the CLI over a folder against pages/s through dsocr serve (PAGES, TOKENS, WINDOW).
# kernels: `dsocr bench kernels` (each CubeCL kernel against its plain-Burn reference, real shapes).
# profile: CubeCL's kernel profile of two decode runs of different lengths (kernels per step = the difference).
# ab: the stages with the dsocr-nn kernels on and off (DSOCR_KERNELS=0), PyTorch beside (TOKENS forced).
# check: every dsocr-nn kernel against its reference at the real shapes, then parity on CUDA (f32, bf16) and WGPU f32.
# graph: batch-1 decode with the step replayed as a CUDA graph and eager (DSOCR_GRAPH=0), PyTorch beside
#        (TOKENS forced, 1000 by default as issue 11 asks).
# quant: q8/q4 decoder weights on CUDA: the quantized kernels at the real shapes (checked, then timed
#        against the float ones), parity of a q8/q4
#        decoder (bf16 activations), decode tokens/s and peak device memory next to bf16 and PyTorch
#        (TOKENS forced), and a saved q8 folder (dsocr quantize) loaded.
# vision: the vision half (and prefill) of the new binary against the one in .carry/dsocr-base.xz (if
#         present), flash attention on and off (DSOCR_KERNELS), PyTorch beside; the flash check at
#         the real shapes; CUDA parity; a CubeCL kernel profile of the vision stages.
# gemm: vision and prefill with each cubek matmul routine of dsocr-nn's gemm (DSOCR_GEMM=ROUTINES), then the
#       kernel checks and CUDA bf16 parity with the dense and the grouped prefill MoE.
# final: those checks and parity runs, CUDA f32 parity, and the bench (vision, prefill, 200 decode tokens)
#        beside PyTorch.
# batchprofile: CubeCL kernel profiles of eager batched steps of B rows (two lengths: their difference is the steps).
# grouped: batched steps with the grouped expert kernel against the dense all-experts MoE (DSOCR_KERNELS
#          without `grouped`), one process each per BATCHES="B:PAGES ...", alternating; the kernel checks at
#          the real shapes and `bench kernels` with and without the grouped kernel first.
# batch: pages/s with continuous batching, BATCHES="B:PAGES ..." at MEAN forced tokens per page, ADMIT pages
#        admitted together, the first CHECK pages then run alone and their ids compared.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BIN=/tmp/dsocr
[ -x "$BIN" ] || xz -dc .carry/dsocr.xz > "$BIN" && chmod +x "$BIN"
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" / 2>/dev/null; done; ldconfig; fi
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
# dsocr keeps compiled kernels in ~/.cache/dsocr/kernels (DSOCR_KERNEL_CACHE overrides); the
# first process on a fresh machine fills it, later ones start from it. FRESH=1 empties it first.
[ "${FRESH:-0}" = 1 ] && rm -rf ~/.cache/dsocr/kernels
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
FIX=tests/fixtures/reference-tiny
step() { # name, command... (each step at most $LIMIT seconds)
  local name=$1; shift
  local t0=$EPOCHREALTIME
  timeout "${LIMIT:-300}" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
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
  # The same page, prompt and forced lengths for both; PyTorch first, so dsocr's table can show ratios.
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  R=${REPEAT:-3}
  step torch-bf16      env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --repeat $R --json "$OUT/torch.json"
  step bench-cuda-bf16 $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --json "$OUT/bench-cuda.json" --compare "$OUT/torch.json"
  ;;
ab)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  T=${TOKENS:-300}; R=${REPEAT:-1}
  step torch-bf16      env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --repeat $R --decode-tokens $T --skip-pages --json "$OUT/torch.json"
  step kernels-on      $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --json "$OUT/kernels-on.json" --compare "$OUT/torch.json"
  step kernels-off     env DSOCR_KERNELS=0 $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --json "$OUT/kernels-off.json" --compare "$OUT/torch.json"
  ;;
check)
  step kernels-check-bf16 $BIN debug kernels --device cuda --precision bf16 --real
  step kernels-check-f32  $BIN debug kernels --device cuda --precision f32 --real
  step cuda-f32        $BIN debug parity --fixture $FIX --device cuda --precision f32
  step cuda-bf16       $BIN debug parity --fixture $FIX --device cuda --precision bf16
  step wgpu-f32        $BIN debug parity --fixture $FIX --device wgpu --precision f32
  ;;
graph)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  T=${TOKENS:-1000}; R=${REPEAT:-1}
  step torch-bf16      env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --repeat $R --decode-tokens $T --skip-pages --json "$OUT/torch.json"
  step graph-on        $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --skip-breakdown --json "$OUT/graph-on.json" --compare "$OUT/torch.json"
  step graph-no-rope   env DSOCR_KERNELS=matvec,gathered,attention $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --skip-vision --skip-base --skip-breakdown --json "$OUT/graph-no-rope.json" --compare "$OUT/torch.json"
  step graph-no-attn   env DSOCR_KERNELS=matvec,gathered $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --skip-vision --skip-base --skip-breakdown --json "$OUT/graph-no-attn.json" --compare "$OUT/torch.json"
  step graph-off       env DSOCR_GRAPH=0 $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --skip-vision --skip-base --skip-breakdown --json "$OUT/graph-off.json" --compare "$OUT/torch.json"
  ;;
kernels)
  step kernels-bf16    $BIN bench kernels --device cuda --precision bf16 --json "$OUT/kernels-bf16.json"
  step kernels-f32     $BIN bench kernels --device cuda --precision f32 --json "$OUT/kernels-f32.json"
  step kernels-wgpu    $BIN bench kernels --device wgpu --precision f16 --json "$OUT/kernels-wgpu-f16.json"
  ;;
profile)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  for T in ${PROFILE_TOKENS:-33 65}; do
    # Eager steps (DSOCR_GRAPH=0): a replayed graph's kernels are not profiled one by one.
    DSOCR_GRAPH=0 CUBECL_DEBUG_LOG=/tmp/profile-$T.log CUBECL_DEBUG_OPTION=profile step profile-$T $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --skip-vision --skip-base --skip-pages --skip-breakdown --decode-tokens "$T" --repeat 1
    xz -T4 -c /tmp/profile-$T.log > "$OUT/profile-$T.log.xz"
  done
  ;;
batchprofile)
  # CubeCL's kernel profile of eager batched steps (DSOCR_GRAPH=0): B pages admitted at once, forced
  # lengths around two means; the difference of the two profiles is mostly batched steps of B rows.
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  B=${B:-64}
  for T in ${PROFILE_TOKENS:-40 80}; do
    DSOCR_GRAPH=0 CUBECL_DEBUG_LOG=/tmp/bprofile-$T.log CUBECL_DEBUG_OPTION=profile step bprofile-$T $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --batch "$B" --batch-pages "$B" --mean-tokens "$T" --admit-group "${ADMIT:-8}"
    xz -T8 -c /tmp/bprofile-$T.log > "$OUT/bprofile-$T.log.xz"
  done
  ;;
quant)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  T=${TOKENS:-300}; R=${REPEAT:-1}
  step kernels-check-bf16 $BIN debug kernels --device cuda --precision bf16 --real
  step kernels-bf16    $BIN bench kernels --device cuda --precision bf16 --json "$OUT/kernels-bf16.json"
  step kernels-q8      $BIN bench kernels --device cuda --precision bf16 --quant q8 --json "$OUT/kernels-q8.json"
  step kernels-q4      $BIN bench kernels --device cuda --precision bf16 --quant q4 --json "$OUT/kernels-q4.json"
  step parity-q8       $BIN debug parity --fixture $FIX --device cuda --precision bf16 --quant q8
  step parity-q4       $BIN debug parity --fixture $FIX --device cuda --precision bf16 --quant q4
  step torch-bf16      env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --repeat $R --decode-tokens $T --skip-pages --json "$OUT/torch.json"
  for Q in none q8 q4; do
    QA=(); [ "$Q" = none ] || QA=(--quant "$Q")
    step bench-$Q      $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 "${QA[@]}" --repeat $R --decode-tokens $T --skip-pages --json "$OUT/bench-$Q.json" --compare "$OUT/torch.json"
  done
  step quantize-q8     $BIN quantize --model /tmp/full --quant q8 --out /tmp/full-q8 --quiet
  step bench-q8-saved  $BIN bench --model /tmp/full-q8 --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens $T --skip-pages --skip-vision --skip-base --json "$OUT/bench-q8-saved.json" --compare "$OUT/torch.json"
  ;;
vision)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  R=${REPEAT:-5}
  VA=(--image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --skip-decode --skip-pages --skip-breakdown)
  step kernels-check-bf16 $BIN debug kernels --device cuda --precision bf16 --real
  step torch-vision    env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --repeat $R --skip-decode --skip-pages --json "$OUT/torch.json"
  if [ -f .carry/dsocr-base.xz ]; then
    xz -dc .carry/dsocr-base.xz > /tmp/dsocr-base && chmod +x /tmp/dsocr-base
    step vision-base   /tmp/dsocr-base bench --model /tmp/full "${VA[@]}" --json "$OUT/vision-base.json" --compare "$OUT/torch.json"
  fi
  step vision-new      $BIN bench --model /tmp/full "${VA[@]}" --json "$OUT/vision-new.json" --compare "$OUT/torch.json"
  step prefill-grouped $BIN bench --model /tmp/full "${VA[@]}" --skip-vision --skip-base --experts gathered-grouped --json "$OUT/prefill-grouped.json" --compare "$OUT/torch.json"
  step vision-noflash  env DSOCR_KERNELS=matvec,gathered,rms_norm_decode,attention,rope $BIN bench --model /tmp/full "${VA[@]}" --json "$OUT/vision-noflash.json" --compare "$OUT/torch.json"
  step cuda-bf16       $BIN debug parity --fixture $FIX --device cuda --precision bf16
  step cuda-f32        $BIN debug parity --fixture $FIX --device cuda --precision f32
  for B in ${PROFILE_BINS:-$BIN}; do
    n=$(basename $B)
    CUBECL_DEBUG_LOG=/tmp/vprofile-$n.log CUBECL_DEBUG_OPTION=profile step vprofile-$n $B bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat 1 --skip-base --skip-prefill --skip-decode --skip-pages --skip-breakdown
    xz -T4 -c /tmp/vprofile-$n.log > "$OUT/vprofile-$n.log.xz"
  done
  ;;
gemm)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  R=${REPEAT:-3}
  for G in ${ROUTINES:-burn simple_cyclic_cmma double_cyclic_cmma double_tilewise_cmma double_hybrid_cmma specialized_cyclic_cmma ordered_double_cmma simple_cyclic_mma double_cyclic_mma double_tma_mma specialized_tma_mma ordered_double_mma}; do
    step gemm-$G env DSOCR_GEMM=$G $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --skip-decode --skip-pages --skip-breakdown --json "$OUT/gemm-$G.json"
    grep -E "^\| (vision|prefill)" "$OUT/gemm-$G.log" | sed "s/^/    $G /" | tee -a "$OUT/summary.txt"
  done
  ;;&
gemm|final)
  step kernels-check-bf16 $BIN debug kernels --device cuda --precision bf16 --real
  step cuda-bf16       $BIN debug parity --fixture $FIX --device cuda --precision bf16
  step cuda-bf16-grouped $BIN debug parity --fixture $FIX --device cuda --precision bf16 --experts gathered-grouped
  ;;&
final)
  step cuda-f32        $BIN debug parity --fixture $FIX --device cuda --precision f32
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  R=${REPEAT:-5}
  step torch-bf16      env PYTHONUNBUFFERED=1 python3 bench/torch_reference.py --bench /tmp/full --repeat $R --decode-tokens 200 --skip-pages --json "$OUT/torch.json"
  step bench-cuda-bf16 $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --repeat $R --decode-tokens 200 --skip-pages --skip-breakdown --json "$OUT/bench-cuda.json" --compare "$OUT/torch.json"
  ;;
batch)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  for spec in ${BATCHES:-1:8 8:32 32:64 64:128}; do
    B=${spec%%:*}; P=${spec##*:}
    step batch-$B $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --batch "$B" --batch-pages "$P" --mean-tokens "${MEAN:-256}" --admit-group "${ADMIT:-4}" --batch-check "${CHECK:-0}" --json "$OUT/batch-$B.json"
    grep -A3 "^| batch" "$OUT/batch-$B.log" | tail -1 | tee -a "$OUT/summary.txt"
  done
  ;;
grouped)
  mkdir -p /tmp/full
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  NOGROUP=matvec,gathered,rms_norm_decode,attention,rope,gemm
  step kernels-check-bf16 $BIN debug kernels --device cuda --precision bf16 --real
  grep -i "grouped" "$OUT/kernels-check-bf16.log" | tee -a "$OUT/summary.txt"
  step kernels-grouped $BIN bench kernels --device cuda --precision bf16 --iters 100 --json "$OUT/kernels-grouped.json"
  DSOCR_KERNELS=$NOGROUP step kernels-per-slot $BIN bench kernels --device cuda --precision bf16 --iters 100 --json "$OUT/kernels-per-slot.json"
  for spec in ${BATCHES:-128:256}; do
    B=${spec%%:*}; P=${spec##*:}
    for V in ${VARIANTS:-grouped dense}; do
      K=1; [ "$V" = dense ] && K=$NOGROUP
      DSOCR_KERNELS=$K step batch-$V-$B $BIN bench --model /tmp/full --image $FIX/images/page.png --device cuda --precision bf16 --batch "$B" --batch-pages "$P" --mean-tokens "${MEAN:-1000}" --admit-group "${ADMIT:-4}" --batch-check "${CHECK:-0}" --json "$OUT/batch-$V-$B.json"
      echo "$V $B: $(grep -A3 "^| batch" "$OUT/batch-$V-$B.log" | tail -1)" | tee -a "$OUT/summary.txt"
    done
  done
  ;;
serve)
  mkdir -p /tmp/full /tmp/pages
  [ -f /tmp/full/model.safetensors ] || $BIN bench --model /tmp/full --device cpu --load-only > "$OUT/checkpoint.log" 2>&1
  P=${PAGES:-8}; T=${TOKENS:-128}; W=${WINDOW:-90}
  for i in $(seq 1 "$P"); do cp $FIX/images/page.png /tmp/pages/p$i.png; done
  # Forced lengths: random weights never say EOS; the guard off, so every page makes T tokens.
  step warmup          $BIN ocr $FIX/images/page.png --model /tmp/full --device cuda --precision bf16 --max-new-tokens 8 --no-repeat-guard --out /tmp/warm
  step cli-pages       $BIN ocr /tmp/pages --model /tmp/full --device cuda --precision bf16 --max-new-tokens "$T" --no-repeat-guard --out /tmp/cli-out
  $BIN serve --model /tmp/full --device cuda --precision bf16 --port 8000 > "$OUT/serve.log" 2>&1 & SPID=$!
  up() { curl -sf http://127.0.0.1:8000/health > /dev/null 2>&1 || python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health')" 2>/dev/null; }
  for _ in $(seq 1 240); do up && break; sleep 0.5; done
  cat "$OUT/serve.log"
  step http-pages      $BIN bench serve --url http://127.0.0.1:8000 --clients "${CLIENTS:-4}" --duration "$W" --every 15 --image $FIX/images/page.png --max-tokens "$T" --no-repeat-guard --server-pid $SPID --json "$OUT/http.json"
  python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())" > "$OUT/metrics.txt"
  kill -TERM $SPID; wait $SPID
  grep -h "pages/s" "$OUT/cli-pages.log" | tee -a "$OUT/summary.txt"
  ;;
esac
