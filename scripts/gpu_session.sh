#!/usr/bin/env bash
# One GPU session, as run on a lent H100/H200 (no network): the GPU test tier, then the GPU benchmark.
#
#   bash scripts/gpu_session.sh [OUT_DIR]
#
# 1. Installs the wheels carried in .whl/ (if any) into /tmp/site, never over the machine's torch.
# 2. Runs the runtime's parity/invariance/compression tests with FLEXGEN_TEST_DEVICE=cuda (fp32 on the GPU
#    against HF fp32 on the CPU) and records pytest's summary; then checks that what a generate allocates on
#    the device stays within the cost model's predicted peak (tests/test_memory_model.py -k cuda), and times
#    both ways of 4-bit dequantization (scripts/dequant_paths.py).
# 3. Runs scripts/gpu_bench.sh on OPT-30B (dummy fp16 weights, GPU capped to 16 GiB) for ours exact,
#    ours with 4-bit weights and cache (flexgen-c, the paper's FlexGen (c)), accelerate and FlexGen 0.1.8.
# 4. With the time left (SESSION_LIMIT seconds in all, default 560): ours on OPT-30B once more with the
#    planner held to the other kind of attention (share 0 if it chose some CPU attention, else 1; the
#    side it did not take, measured rather than predicted), then Mixtral-8x7B (issue 23: experts placed
#    whole, only the routed ones read; ours then accelerate, one after the other, since both hold most of
#    its 93 GB in host memory), then OPT-6.7B, then decode-step profiles of the policies that stream
#    (scripts/profile_decode.py, OPT-1.3B). MOE_FIRST=1 runs Mixtral right after the tests instead.
# Everything lands in one archive, OUT_DIR/gpu_session.tgz (the device tool returns at most 8 files),
# plus OUT_DIR/gpu_session.log. Each step has its own time limit so the archive is always written.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/bench/gpu}}"
WORK="$(mktemp -d)/gpu_session"
mkdir -p "$OUT_DIR" "$WORK"
LOG="$OUT_DIR/gpu_session.log"
exec > >(tee -a "$LOG") 2>&1
pack() { tar -C "$(dirname "$WORK")" -czf "$OUT_DIR/gpu_session.tgz" gpu_session; }
trap pack EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_session.sh: wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHON="${PYTHON:-python3}"
# limits that fit one 10-minute device call (H200 runs: tests 42 s; OPT-30B ours 86 s with a first-run cache
# pinning since fixed (its warm-up now runs the timed run's 4 tokens), accelerate 66 s, FlexGen 0.1.8 ~145 s;
# flexgen-c, not yet run, estimated ~95 s; OPT-6.7B gets what is left; 400 s for OPT-30B). Systems run in the
# order named and the JSON is rewritten after each, so a cut loses the last.
export PYTHON GPU_BENCH_LIMIT_LARGE="${GPU_BENCH_LIMIT_LARGE:-400}"
date -u +"start %Y-%m-%d %H:%M:%S UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/gpu.txt"
"$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$WORK/gpu.txt"
nproc | sed 's/^/cpus /' | tee -a "$WORK/gpu.txt"; free -g | sed -n 2p | tee -a "$WORK/gpu.txt"

echo "== GPU tests (FLEXGEN_TEST_DEVICE=cuda, fp32)"
FLEXGEN_TEST_DEVICE=cuda timeout "${GPU_TEST_LIMIT:-75}" "$PYTHON" -m pytest -q -p no:cacheprovider \
  tests/test_parity.py tests/test_invariance.py tests/test_compression.py tests/test_prefix_sharing.py \
  tests/test_sampling.py tests/test_tiers.py tests/test_shared_prefix.py tests/test_weight_store.py \
  tests/test_attention.py tests/test_hardware.py tests/test_io_queue.py 2>&1 | tee "$WORK/gpu_tests.log" | tail -n 30
echo "gpu tests exit ${PIPESTATUS[0]}"
echo "== device memory vs the cost model (torch.cuda.max_memory_allocated)"
timeout "${GPU_MEMORY_TEST_LIMIT:-30}" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_memory_model.py -k cuda 2>&1 \
  | tee "$WORK/gpu_memory_tests.log" | tail -n 30
echo "memory tests exit ${PIPESTATUS[0]}"
echo "== 4-bit dequantization, the two-pass and the general path (same bits; which is faster here)"
timeout 40 "$PYTHON" scripts/dequant_paths.py --device cuda --out "$WORK" || echo "dequant_paths exit $?"

mixtral() {  # $1: seconds it may take
  echo "== mixtral-8x7b, ours vs accelerate, GPU capped to 16 GiB (${1} s)"
  timeout --kill-after=10 "$1" "$PYTHON" -m flexgen_eval.bench --model mixtral-8x7b --dummy-weights \
    --prompt-len 512 --gen-len 32 --cut-gen-len 4 --gpu-mem 16GiB --cpu-mem 60GiB --disk 40GiB \
    --systems flexgen,accelerate --no-alternate --repeat 1 --max-batch 64 --offload-dir /tmp/flexgen-bench-offload \
    --hardware "${MOE_PROFILE:-h100}" --device cuda --dtype float16 --cap-gpu --out "$WORK/mixtral-8x7b.json" 2>&1 \
    | tail -n 16 || echo "mixtral run exit $?"
  rm -rf /tmp/flexgen-bench-offload
}
if [ "${MOE_FIRST:-0}" = 1 ]; then mixtral "${MOE_LIMIT:-240}"; fi

echo "== GPU benchmark"
WHEEL_ARGS=(--out "$WORK" --wheel .whl/flexgen-0.1.8-py3-none-any.whl)
bash scripts/gpu_bench.sh "${WHEEL_ARGS[@]}" --models opt-30b --systems flexgen,flexgen-c,accelerate,flexgen-0.1.8

left=$(( ${SESSION_LIMIT:-560} - SECONDS - 10 ))
if [ -f "$WORK/opt-30b.json" ] && [ "$left" -gt 70 ]; then
  other=$("$PYTHON" - "$WORK/opt-30b.json" "$WORK/measured_profile.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
json.dump(run["hardware_profile"], open(sys.argv[2], "w"))
print(0 if run["plan"]["policy"]["cpu_attention"] > 0 else 1)
PY
) && {
    echo "== opt-30b, ours with cpu_attention $other (the planner's other side)"
    timeout --kill-after=10 "$(( left < 110 ? left : 110 ))" "$PYTHON" -m flexgen_eval.bench --model opt-30b \
      --dummy-weights --prompt-len 512 --gen-len 32 --cut-gen-len 4 --gpu-mem 16GiB --cpu-mem 100GiB --disk 40GiB \
      --systems flexgen --cpu-attention "$other" --repeat 1 --max-batch 256 --offload-dir /tmp/flexgen-bench-offload \
      --hardware "$WORK/measured_profile.json" --device cuda --dtype float16 --cap-gpu \
      --out "$WORK/opt-30b-attention-$other.json" 2>&1 | tail -n 14 || echo "alternative run exit $?"
    rm -rf /tmp/flexgen-bench-offload
  }
fi

left=$(( ${SESSION_LIMIT:-560} - SECONDS - 80 ))
if [ "${MOE_FIRST:-0}" != 1 ] && [ "$left" -gt 150 ]; then
  [ -f "$WORK/measured_profile.json" ] && MOE_PROFILE="$WORK/measured_profile.json"
  mixtral "$(( left < 240 ? left : 240 ))"
fi

left=$(( ${SESSION_LIMIT:-560} - SECONDS - 20 ))
if [ "$left" -gt 60 ]; then
  GPU_BENCH_LIMIT_SMALL="${GPU_BENCH_LIMIT_SMALL:-$(( left < 110 ? left : 110 ))}" \
    bash scripts/gpu_bench.sh "${WHEEL_ARGS[@]}" --models opt-6.7b
fi

left=$(( ${SESSION_LIMIT:-560} - SECONDS ))
if [ "$left" -gt 30 ]; then
  echo "== decode steps of streaming policies (OPT-1.3B, fp16), ${left} s left"
  timeout "$left" "$PYTHON" scripts/profile_decode.py --model opt-1.3b --device cuda --no-hf \
    --variants cpu-cache-link-b32,cpu-cache-half-b32,cpu-cache-b32,weights50,resident --out "$WORK" \
    || echo "profile_decode exit $?"
fi
date -u +"end %Y-%m-%d %H:%M:%S UTC"
