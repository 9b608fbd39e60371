"""`flexgen-eval profile`: measure this machine's links, disk and matmul rates for the planner."""
from __future__ import annotations

import json

from flexgen_core.planning.hardware import PRESETS, load_profile
from flexgen_core.profiler import measure_profile


def register(subparsers):
    p = subparsers.add_parser(
        "profile", help="measure bandwidths and flop rates into a hardware profile (JSON)",
        description="Measure host<->device bandwidth (pinned and not), disk read/write on the offload "
                    "directory (bypassing the page cache where possible) and matmul throughput on the "
                    "compute device and the CPU. Pass the JSON to `flexgen-eval plan --hardware FILE`.")
    p.add_argument("--out", help="write the profile JSON here (default: print it)")
    p.add_argument("--offload-dir", default="offload", help="directory whose disk is measured (default: ./offload)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="compute device (default: cuda if present)")
    p.add_argument("--name", default="measured", help="name stored in the profile")
    p.add_argument("--show", metavar="PRESET_OR_FILE",
                   help=f"print a profile instead of measuring ({', '.join(PRESETS)} or a JSON file)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.show:
        print(load_profile(args.show).describe())
        return 0
    profile = measure_profile(args.offload_dir, args.device, name=args.name)
    print(profile.describe())
    if args.out:
        profile.save(args.out)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(profile.to_dict(), indent=2))
    return 0
