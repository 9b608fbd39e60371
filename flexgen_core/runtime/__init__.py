"""Running requests: `LLM`, the zig-zag block scheduler, jobs (padded blocks in, logits out),
prefix sharing, sampling, outputs and per-block completion. The top room: imports every room below
(model, memory, planning)."""
