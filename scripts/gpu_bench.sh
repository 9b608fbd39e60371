#!/usr/bin/env bash
# GPU throughput benchmark: ours vs HF accelerate vs FlexGen 0.1.8 on OPT-6.7B and OPT-30B (dummy fp16
# weights), with the GPU capped to 16 GiB (torch.cuda.set_per_process_memory_fraction) to stand in for
# the paper's T4. Needs no network. Writes JSON + PNG per model under $OUT (default results/bench/gpu).
#
#   bash scripts/gpu_bench.sh [--dry-run] [--models "opt-6.7b opt-30b"] [--systems flexgen,flexgen-0.1.8,accelerate[,flexgen-c]]
#                             [--cut-gen-len 4] [--repeat 1] [--out DIR] [--wheel flexgen-0.1.8-py3-none-any.whl]
#
# Time: must finish within 8 minutes on one H100/H200, so every system runs prompt 512 / gen 32 with
# only --cut-gen-len decode steps timed (default 4) and the remaining steps projected from them, the
# same way for every system (FlexGen 0.1.8 projects its own the same way); one timed run per system;
# systems run one after the other and the JSON is rewritten after each, so a model cut off by its
# time limit still leaves the systems that finished.
# FlexGen 0.1.8 runs only if its wheel is carried (--wheel, or the first flexgen-0.1.8*.whl under
# wheels/ or shared/wheels/): it is installed --no-index into a private directory, never into .venv.
# --dry-run checks the arguments and prints each model's budget, plan and batches without a GPU.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
MODELS="opt-6.7b opt-30b"
SYSTEMS="flexgen,flexgen-0.1.8,accelerate"
CUT=4
REPEAT=1
OUT_DIR="${OUT:-results/bench/gpu}"
WHEEL=""
GPU_MEM="16GiB"
CPU_MEM="${GPU_BENCH_CPU_MEM:-100GiB}"   # the H100/H200 boxes have 128 GiB of RAM
DISK="${GPU_BENCH_DISK:-40GiB}"          # and a 64 GiB disk
PYTHON="${PYTHON:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --models) MODELS="${2:?--models needs a value}"; shift ;;
    --systems) SYSTEMS="${2:?--systems needs a value}"; shift ;;
    --cut-gen-len) CUT="${2:?--cut-gen-len needs a value}"; shift ;;
    --repeat) REPEAT="${2:?--repeat needs a value}"; shift ;;
    --out) OUT_DIR="${2:?--out needs a value}"; shift ;;
    --wheel) WHEEL="${2:?--wheel needs a value}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_bench.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for n in "$CUT" "$REPEAT"; do
  case "$n" in ''|*[!0-9]*) echo "gpu_bench.sh: --cut-gen-len and --repeat take positive integers" >&2; exit 2 ;; esac
done
for m in $MODELS; do
  case "$m" in opt-6.7b|opt-30b|opt-1.3b|opt-13b) ;; *) echo "gpu_bench.sh: unsupported model $m" >&2; exit 2 ;; esac
done

cd "$(dirname "$0")/.."
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"

# FlexGen 0.1.8 from a carried wheel, if any.
if [ -z "$WHEEL" ]; then
  WHEEL="$(ls wheels/flexgen-0.1.8*.whl shared/wheels/flexgen-0.1.8*.whl 2>/dev/null | head -n1 || true)"
fi
if [ "$DRY_RUN" = 0 ] && [ -n "$WHEEL" ] && [ -f "$WHEEL" ]; then
  FG_DIR="$(mktemp -d)/flexgen-pkg"
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$FG_DIR" "$WHEEL"
  export PYTHONPATH="$PYTHONPATH:$FG_DIR"
elif [ "$DRY_RUN" = 0 ]; then
  echo "gpu_bench.sh: no flexgen 0.1.8 wheel carried: flexgen-0.1.8 will be skipped (reason in the JSON)"
fi

DEVICE_ARGS=(--device cuda --dtype float16 --cap-gpu)
if [ "$DRY_RUN" = 1 ]; then
  DEVICE_ARGS+=(--dry-run --hardware t4)
else
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_bench.sh: torch sees no CUDA device')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt" || true
fi

start=$(date +%s)
for m in $MODELS; do
  # seconds each model may take (the sum stays under 8 minutes with the start-up)
  case "$m" in opt-30b) LIMIT="${GPU_BENCH_LIMIT_LARGE:-270}" ;; *) LIMIT="${GPU_BENCH_LIMIT_SMALL:-150}" ;; esac
  echo "== $m: prompt 512, gen 32 (decode cut to $CUT steps, projected), gpu $GPU_MEM (capped), cpu $CPU_MEM, disk $DISK"
  cmd=("$PYTHON" -m flexgen_eval.bench --model "$m" --dummy-weights --prompt-len 512 --gen-len 32
       --cut-gen-len "$CUT" --gpu-mem "$GPU_MEM" --cpu-mem "$CPU_MEM" --disk "$DISK" --systems "$SYSTEMS"
       --repeat "$REPEAT" --max-batch 256 --offload-dir "${TMPDIR:-/tmp}/flexgen-bench-offload"
       --out "$OUT_DIR/$m.json" "${DEVICE_ARGS[@]}")
  echo "+ ${cmd[*]}"
  if [ "$DRY_RUN" = 1 ]; then
    "${cmd[@]}"
  else
    timeout --signal=TERM --kill-after=10 "$LIMIT" "${cmd[@]}" 2>&1 | tee "$OUT_DIR/$m.log" || \
      echo "gpu_bench.sh: $m did not finish (exit $?): see $OUT_DIR/$m.log"
    rm -rf "${TMPDIR:-/tmp}/flexgen-bench-offload"
  fi
done
echo "gpu_bench.sh: done in $(( $(date +%s) - start )) s; results in $OUT_DIR"
