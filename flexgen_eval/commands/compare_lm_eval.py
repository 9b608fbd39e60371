"""`flexgen-eval compare-lm-eval`: lm_eval with `--model flexgen` and with `--model hf`, side by side."""
from __future__ import annotations


def register(subparsers):
    from flexgen_eval.bench import lm_eval_compare

    p = subparsers.add_parser("compare-lm-eval", help="lm-eval tasks on --model flexgen and --model hf: metrics "
                                                      "and per-sample log-likelihoods compared, wall times as ratios",
                              description=lm_eval_compare.__doc__.split("\n\n")[0].split(": ", 1)[1])
    lm_eval_compare.add_arguments(p)
    p.set_defaults(func=lm_eval_compare.run)
