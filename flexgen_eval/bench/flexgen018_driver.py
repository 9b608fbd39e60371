"""Run FlexGen 0.1.8's `flex_opt` benchmark offline and under a GPU memory cap.

    python -m flexgen_eval.bench.flexgen018_driver [--memory-fraction F] -- <flex_opt arguments>

flex_opt loads facebook/opt-30b's tokenizer from the hub only to build its test prompt
("Paris is the capital city of", padded to the prompt length); with dummy weights the token ids
do not matter, so a stub tokenizer that pads with OPT's pad id stands in for it.
"""
from __future__ import annotations

import argparse
import sys


class StubTokenizer:
    pad_token_id, bos_token_id = 1, 2

    def __call__(self, prompts, padding="max_length", max_length=32, **_):
        ids = [self.bos_token_id, 40025, 16, 5, 812, 343, 9]  # "</s>Paris is the capital city of" in OPT's vocab
        row = [self.pad_token_id] * max(0, max_length - len(ids)) + ids[-max_length:]
        return argparse.Namespace(input_ids=[list(row) for _ in prompts])

    def batch_decode(self, ids, **_):
        return ["" for _ in ids]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-fraction", type=float, default=None,
                    help="torch.cuda.set_per_process_memory_fraction before FlexGen allocates")
    args = ap.parse_args(own)

    import torch
    import transformers

    if args.memory_fraction:
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction, 0)
    transformers.AutoTokenizer.from_pretrained = staticmethod(lambda *a, **k: StubTokenizer())
    from flexgen import flex_opt

    flex_opt.AutoTokenizer.from_pretrained = staticmethod(lambda *a, **k: StubTokenizer())
    parser = argparse.ArgumentParser()
    flex_opt.add_parser_arguments(parser)
    fargs = parser.parse_args(rest)
    flex_opt.run_flexgen(fargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
