"""`flexgen-eval compare-helm`: helm-run on the flexgen client and on HELM's HuggingFace client, side by side."""
from __future__ import annotations


def register(subparsers):
    from flexgen_eval.bench import helm_compare

    p = subparsers.add_parser("compare-helm", help="HELM run entries on our client and on HELM's HF client: "
                                                   "predictions compared, wall times as ratios",
                              description=helm_compare.__doc__.split("\n\n")[0].split(": ", 1)[1])
    helm_compare.add_arguments(p)
    p.set_defaults(func=helm_compare.run)
