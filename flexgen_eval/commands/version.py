"""`flexgen-eval version`."""
from flexgen_core import __version__


def register(subparsers):
    p = subparsers.add_parser("version", help="print the package version")
    p.set_defaults(func=lambda args: print(__version__))
