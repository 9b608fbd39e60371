"""`flexgen-lm-eval`: the stock lm_eval CLI with `--model flexgen` registered first (same arguments)."""
from __future__ import annotations

import sys


def main() -> int:
    from flexgen_eval.lm_eval_register import register

    register()
    from lm_eval.__main__ import cli_evaluate

    return cli_evaluate() or 0


if __name__ == "__main__":
    sys.exit(main())
