"""`flexgen-eval`: one sub-command per module under flexgen_eval/commands."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = [
    "flexgen_eval.commands.version",
    "flexgen_eval.commands.env",
    "flexgen_eval.commands.fetch_model",
    "flexgen_eval.commands.demo",
    "flexgen_eval.commands.plan",
    "flexgen_eval.commands.profile",
    "flexgen_eval.commands.helm_config",
    "flexgen_eval.commands.bench",
    "flexgen_eval.commands.measure",
    "flexgen_eval.commands.cache",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexgen-eval", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)


def run_command(args) -> int:
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        # Bad input gets one clear line, not a traceback.
        print(f"flexgen-eval {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
