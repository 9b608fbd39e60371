"""Time the runtime's 4-bit dequantization both ways on a device: the two-pass path (codes times step
into fp32, plus the minimum straight into the output; the default on CUDA) and the general one (unpack,
widen, multiply, add, cast: the default on a CPU). Both give the same bits; this records which is faster.

    python scripts/dequant_paths.py [--device cuda] [--n 8192] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from flexgen_core.memory import compression  # noqa: E402
from flexgen_core.memory.compression import QuantConfig, dequantize, quantize  # noqa: E402
from flexgen_core.planning.measure import _mean_time  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=8192, help="an n x n fp16 matrix (default 8192)")
    ap.add_argument("--out", help="directory for dequant_paths.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = QuantConfig(4, 64)
    x = (torch.randn(args.n, args.n, device=device) * 0.02).half()
    packed = quantize(x, cfg)
    out = torch.empty_like(x)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    results, values = {}, {}
    for name, devices in (("two-pass", {device.type}), ("general", set())):
        compression.TWO_PASS_DEVICES = devices
        s = _mean_time(lambda: dequantize(packed, args.n, cfg, torch.float16, out=out), sync, 0.5)
        results[name] = {"seconds": s, "g_values_per_s": args.n * args.n / s / 1e9}
        values[name] = out.clone()
        print(f"{name:9s} {s * 1e3:8.2f} ms  {results[name]['g_values_per_s']:8.2f} G values/s")
    same = torch.equal(values["two-pass"].view(torch.int16), values["general"].view(torch.int16))
    print("same bits:", same)
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "n": args.n, "paths": results, "same_bits": same, "torch": torch.__version__}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "dequant_paths.json"), "w") as f:
            json.dump(record, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
