"""Put the offline benchmark data (FLEXGEN_DATA_DIR) where HELM's scenarios look for it, so
they skip their downloads: MMLU csvs under `scenarios/mmlu/data/`, XSum as the pickle the
`summarization_xsum_sampled` scenario reads. The source files are never modified.

    python -m flexgen_eval.helm.offline_data [--data-dir DIR] [-o benchmark_output]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys

XSUM_SOURCE = "xsum/dev.complete980.jsonl"
XSUM_TEST_ROWS = 518  # the paper's instance count; the rows before them are few-shot examples


def prepare(data_dir: str, output_path: str = "benchmark_output") -> list[str]:
    """Returns what was written; targets that already exist are left alone (HELM would reuse them too)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data dir {data_dir} does not exist (set FLEXGEN_DATA_DIR or pass --data-dir)")
    scenarios = os.path.join(output_path, "scenarios")
    written = []
    mmlu_src, mmlu_dst = os.path.join(data_dir, "mmlu", "data"), os.path.join(scenarios, "mmlu", "data")
    if os.path.isdir(mmlu_src) and not os.path.exists(mmlu_dst):
        # HELM only checks that `data` exists, so a partial copy must never be left under that name.
        shutil.copytree(mmlu_src, mmlu_dst + ".tmp", dirs_exist_ok=True)
        os.replace(mmlu_dst + ".tmp", mmlu_dst)
        written.append(mmlu_dst)
    xsum_src = os.path.join(data_dir, XSUM_SOURCE)
    xsum_dst = os.path.join(scenarios, "summarization", "data", "xsum-sampled.pk")
    if os.path.isfile(xsum_src) and not os.path.exists(xsum_dst):
        os.makedirs(os.path.dirname(xsum_dst), exist_ok=True)
        with open(xsum_dst + ".tmp", "wb") as f:
            pickle.dump(xsum_splits(xsum_src), f)
        os.replace(xsum_dst + ".tmp", xsum_dst)
        written.append(xsum_dst)
    return written


def xsum_splits(path: str) -> dict:
    """{train, validation, test} lists of {document, summary}, as in HELM's xsum-sampled.pk."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # A row or so holds a number (NaN) instead of a document; HELM's scenario would crash on it.
    examples = [{"document": r["dialogue"], "summary": r["summary"]} for r in rows
                if isinstance(r.get("dialogue"), str) and isinstance(r.get("summary"), str)
                and r["dialogue"].strip() and r["summary"].strip()]
    if len(examples) <= XSUM_TEST_ROWS:
        raise ValueError(f"{path}: {len(examples)} usable rows, need more than {XSUM_TEST_ROWS}")
    cut = len(examples) - XSUM_TEST_ROWS
    return {"train": examples[:cut], "validation": [], "test": examples[cut:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexgen_eval.helm.offline_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("FLEXGEN_DATA_DIR"),
                   help="benchmark data (default: $FLEXGEN_DATA_DIR)")
    p.add_argument("-o", "--output-path", default="benchmark_output", help="helm-run's -o (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.data_dir:
        print("offline_data: error: set FLEXGEN_DATA_DIR or pass --data-dir", file=sys.stderr)
        return 2
    try:
        written = prepare(args.data_dir, args.output_path)
    except (OSError, ValueError) as e:
        print(f"offline_data: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing to do: the offline data is already in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
