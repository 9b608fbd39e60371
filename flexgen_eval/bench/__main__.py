"""`python -m flexgen_eval.bench ARGS` = `flexgen-eval bench ARGS` (for scripts that run without the
console entry point)."""
from __future__ import annotations

import argparse
import shlex
import sys


def main(argv=None) -> int:
    from flexgen_eval.commands import bench

    parser = argparse.ArgumentParser(prog="flexgen-eval")
    sub = parser.add_subparsers(dest="command")
    bench.register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["bench", *argv])
    args.command_line = "python -m flexgen_eval.bench " + shlex.join(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"flexgen-eval bench: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
