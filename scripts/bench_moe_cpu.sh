#!/usr/bin/env bash
# Issue 23's CPU benchmark: OLMoE-1B-7B (its built-in config, dummy bf16 weights, 13.8 GB), prompt 512 /
# gen 32, under a RAM budget of 1.5 GiB + 1.5 GiB (BUDGET=3GiB for the earlier 3 + 3 GiB runs) that leaves
# most experts on disk: ours vs accelerate at batch 1 (every decode step timed), then each at its best batch
# up to 256 (decode cut to 4 steps, projected): ours prefills a block batch by batch and decodes it as one
# (the KV cache of 256 sequences, ~18 GB, on disk).
# Systems run one after the other (--no-alternate): in turns, each system's first run after the other's
# ran up to 1.8x slower on this 24 GiB VM (the other's pages being reclaimed), which made the paired
# prefill-only runs slower than the full runs they are subtracted from.
#
#   bash scripts/bench_moe_cpu.sh [OUT_DIR]     (default results/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-results/bench}"
BUDGET="${BUDGET:-1536MiB}"  # each of the two RAM tiers
BENCH=(.venv/bin/flexgen-eval bench --model olmoe-1b-7b --dummy-weights --dtype bfloat16 --prompt-len 512
       --gen-len 32 --gpu-mem "$BUDGET" --cpu-mem "$BUDGET" --systems flexgen,accelerate --hardware measured --no-alternate)
"${BENCH[@]}" --max-batch 1 --repeat 2 --out "$OUT_DIR/cpu-olmoe-1b-7b-disk-batch1.json"
"${BENCH[@]}" --max-batch 256 --repeat 1 --cut-gen-len 4 --out "$OUT_DIR/cpu-olmoe-1b-7b-disk-best-batch.json"
