"""`python -m flexgen_eval.bench ARGS` = `flexgen-eval bench ARGS` (for scripts that run without the
console entry point)."""
from __future__ import annotations

import argparse
import shlex
import sys


def main(argv=None) -> int:
    from flexgen_eval.cli import run_command
    from flexgen_eval.commands import bench

    parser = argparse.ArgumentParser(prog="flexgen-eval")
    sub = parser.add_subparsers(dest="command")
    bench.register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["bench", *argv])
    args.command_line = "python -m flexgen_eval.bench " + shlex.join(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
