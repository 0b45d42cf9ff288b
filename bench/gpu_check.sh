#!/usr/bin/env bash
# The GPU check: everything a short GPU session should run, in one go, every result in one folder.
#
#   bash bench/gpu_check.sh [OUT]        # OUT defaults to $OUT, else bench/results/gpu_check_<time>
#
# Each step runs under its own `timeout`; a step that needs CUDA prints "skipped: no CUDA" where
# there is none, so the whole script dry-runs on a CPU machine. Target on one H200: < 8 minutes.
#   versions       python / torch / triton / nvcc / driver, device and capability, backend status
# Phase A, in parallel (nothing here is timed against anything else):
#   compile_check  Triton kernels compiled as the runtime does: registers and spills per kernel and dtype (CPU)
#   triton_gpu     the compiled-Triton GPU tier (tests/test_triton_gpu.py) over $SHARDS processes, one Triton cache
#   cuda_build     the CUDA extension for this GPU's architecture only (9.0 on a CPU machine), then
#   cuda_tests     the CUDA extension's tests (tests/test_cuda_kernels.py)
#   step_checks    torch.cuda.set_sync_debug_mode("warn") around a CoOp / CoCoOp step; torch.compile fwd+bwd
# Phase B, one at a time (timings):
#   bench_bf16/32  bench/attention/bench_attention.py: text suffix, CoCoOp, ViT-B/16 deep prompts, ViT-B/16 plain layer B = 128
#   large_batch    21,000 x 77 x 8 x 64 bf16 text suffix, against eager on single sequences
# Without CUDA, step_checks / bench / large_batch run small CPU dry runs of the same scripts.
# summary.txt lists every step: status, exit code, seconds, log file. Exit status 0 = no step failed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-${OUT:-$ROOT/bench/results/gpu_check_$(date +%Y%m%d_%H%M%S)}}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
SHARDS="${SHARDS:-4}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT/triton_cache}"  # shared by every process below
export OMP_WAIT_POLICY=PASSIVE
unset TRITON_INTERPRET  # the GPU tier needs the compiled kernels (the interpreter tier starts its own)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$SECONDS

HAS_CUDA="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [ "$HAS_CUDA" = 1 ]; then
  CAP="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
else
  CAP="9.0"
fi
export FASTPROMPT_CUDA_ARCH_LIST="${FASTPROMPT_CUDA_ARCH_LIST:-$CAP}"  # build and load for this GPU only

record() {  # name status rc seconds log
  printf '%-20s %-22s rc=%-4s %5ss  %s\n' "$1" "$2" "$3" "$4" "$5" | tee -a "$SUMMARY" >&2
}

# step NAME TIMEOUT_S [--cuda] CMD...: run CMD under timeout, output to $OUT/NAME.log.
step() {
  local name="$1" limit="$2"; shift 2
  local log="$OUT/$name.log" began=$SECONDS rc status
  if [ "${1:-}" = "--cuda" ]; then
    shift
    if [ "$HAS_CUDA" != 1 ]; then
      echo "skipped: no CUDA" | tee "$log"
      record "$name" "skipped: no CUDA" "-" 0 "$log"
      return 0
    fi
  fi
  echo "== $name (timeout ${limit}s): $*" | tee "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT (${limit}s)" ;;
    *) status=FAILED ;;
  esac
  tail -n +2 "$log" | tail -n 4 | sed 's/^/    /'
  record "$name" "$status" "$rc" "$((SECONDS - began))" "$log"
}

PIDS=()
bg() {  # bg NAME ...: `step NAME ...` in the background (only its summary line is shown, when it ends)
  step "$@" > /dev/null &
  PIDS+=($!)
}

# ---- 1. versions and capability ---------------------------------------------------------------
step versions 120 bash -c "
  '$PY' -c 'import sys, torch, triton; print(\"python\", sys.version.split()[0]); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda); print(\"triton\", triton.__version__)'
  '$CUDA_HOME/bin/nvcc' --version | tail -n 2 || echo 'nvcc: not found'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo 'nvidia-smi: no GPU'
  '$PY' -c 'import torch; print(\"device:\", torch.cuda.get_device_name(), \"capability\", torch.cuda.get_device_capability(), \"SMs\", torch.cuda.get_device_properties(0).multi_processor_count) if torch.cuda.is_available() else print(\"device: no CUDA\")'
  echo FASTPROMPT_CUDA_ARCH_LIST=$FASTPROMPT_CUDA_ARCH_LIST
  '$PY' -m fastprompt.env 2>/dev/null || '$PY' -c 'import torch; from fastprompt.ops import backend_status; d = \"cuda\" if torch.cuda.is_available() else \"cpu\"; print(backend_status(d))'
"

# ---- 2. phase A: tests, builds and checks in parallel --------------------------------------------
bg compile_check 300 env -u TRITON_INTERPRET "$PY" -m fastprompt.kernels.compile_check --arch 90 --dtype all --out "$OUT"

triton_tier() {  # the GPU tier over $SHARDS processes; one Triton cache ($TRITON_CACHE_DIR)
  local pids=() rc=0 i
  for i in $(seq 0 $((SHARDS - 1))); do
    FASTPROMPT_TEST_SHARD="$i/$SHARDS" "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_gpu.py \
      --junitxml="$OUT/triton_gpu_$i.xml" > "$OUT/triton_gpu_$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || rc=1
    echo "shard $i/$SHARDS: $(tail -n 1 "$OUT/triton_gpu_$i.log")"
  done
  return $rc
}
export -f triton_tier
export PY OUT SHARDS
bg triton_gpu 360 --cuda bash -c triton_tier

build_and_test() {  # the extension for this GPU only, then its tests (they load that build)
  "$PY" -c "
from fastprompt.ops import jit
print('building for', jit.cuda_arch_list(), 'into', jit.build_directory('cuda'), flush=True)
print('built:', jit.build_extension('cuda'), flush=True)
" || return 1
  [ "$HAS_CUDA" = 1 ] || { echo "cuda_tests: skipped: no CUDA"; return 0; }
  FASTPROMPT_DISABLE_JIT=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py \
    --junitxml="$OUT/cuda_tests.xml"
}
export -f build_and_test
export HAS_CUDA
bg cuda_build_and_tests 480 bash -c build_and_test

if [ "$HAS_CUDA" = 1 ]; then
  bg step_checks 300 "$PY" bench/steps/step_checks.py --out "$OUT"
else  # a dry run on the tiny model
  bg step_checks_cpu 300 "$PY" bench/steps/step_checks.py --device cpu --model tiny --images 2 --classes 8 --out "$OUT"
fi
wait "${PIDS[@]}"

# ---- 3. phase B: timings, one at a time on an otherwise idle GPU --------------------------------
SHAPES="text cocoop vit vit_plain"
PROVIDERS="${BENCH_PROVIDERS:-eager triton cuda}"  # add flex (each shape/mode compiles for ~30 s)
if [ "$HAS_CUDA" = 1 ]; then
  export FASTPROMPT_DISABLE_JIT=1  # use the build of phase A; never build inside a timing
  step bench_bf16 200 "$PY" bench/attention/bench_attention.py --shapes $SHAPES --dtype bf16 --repeats 20 \
    --providers $PROVIDERS --csv "$OUT/bench_attention.csv"
  step bench_fp32 150 "$PY" bench/attention/bench_attention.py --shapes $SHAPES --dtype fp32 --repeats 10 \
    --providers $PROVIDERS --csv "$OUT/bench_attention.csv"
  step large_batch 180 "$PY" bench/attention/large_batch_probe.py --out "$OUT"
else  # dry runs of the same scripts: small shapes (agreement in Triton's interpreter), few sequences
  step bench_small_cpu 300 env TRITON_INTERPRET=1 "$PY" bench/attention/bench_attention.py --small --no-timing \
    --shapes $SHAPES --modes fwd+bwd --csv "$OUT/bench_attention.csv"
  step large_batch_cpu 300 env TRITON_INTERPRET=1 "$PY" bench/attention/large_batch_probe.py --device cpu --n 16 \
    --seq-len 20 --heads 2 --backends cpu triton --out "$OUT"
fi

echo "total: $((SECONDS - START)) s; results in $OUT" | tee -a "$SUMMARY"
! grep -qE ' (FAILED|TIMEOUT)' "$SUMMARY"
