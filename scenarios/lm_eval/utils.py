"""Offline loaders for the task YAMLs here: the shared benchmark files under $FLEXGEN_DATA_DIR,
converted to the columns the stock lm-eval tasks read, so prompts, choices and metrics stay stock.

Each loader is a `custom_dataset`; lm-eval calls it with the task's metadata and dataset_kwargs.
"""
from __future__ import annotations

import bz2
import csv
import json
import os
import re

import datasets
from lm_eval.tasks.hellaswag.utils import preprocess as hellaswag_preprocess
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as wikitext_process_results  # noqa: F401
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: F401

DATA_VAR = "FLEXGEN_DATA_DIR"


def data_path(*parts: str) -> str:
    root = os.environ.get(DATA_VAR)
    if not root:
        raise RuntimeError(f"{DATA_VAR} is not set: point it at the shared benchmark data (e.g. ../shared/data)")
    path = os.path.join(root, *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {DATA_VAR}={root} the shared benchmark data folder?")
    return path


def _splits(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


# -- ARC-Easy: AI2's jsonl -> the HF ai2_arc columns ------------------------------------------
def _arc_rows(name: str) -> list[dict]:
    rows = []
    with open(data_path("arc_easy", name), encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            choices = doc["question"]["choices"]
            rows.append({"id": doc["id"], "question": doc["question"]["stem"],
                         "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                         "answerKey": doc["answerKey"]})
    return rows


def arc_easy(**_) -> datasets.DatasetDict:
    return _splits(test=_arc_rows("ARC-Easy-Test.jsonl"), validation=_arc_rows("ARC-Easy-Dev.jsonl"))


# -- LAMBADA (OpenAI's version) -----------------------------------------------------------------
def lambada_openai(**_) -> datasets.DatasetDict:
    with open(data_path("lambada", "lambada_test.jsonl"), encoding="utf-8") as f:
        return _splits(test=[{"text": json.loads(line)["text"]} for line in f if line.strip()])


# -- HellaSwag: 6 text lines per task -> the stock task's processed columns -----------------
_SENTENCE_END = re.compile(r"[.!?] ")


def _hellaswag_query(line: str) -> str:
    """The text file holds `label: ctx_a ctx_b` with ctx_b as written; the stock task capitalises
    ctx_b. ctx_b is the unfinished last sentence, so capitalise a trailing lowercase fragment."""
    label, _, ctx = line.partition(": ")
    ends = [m.end() for m in _SENTENCE_END.finditer(ctx)]
    cut = ends[-1] if ends else 0
    tail = ctx[cut:]
    if tail[:1].islower() and not tail.rstrip().endswith((".", "!", "?")):
        ctx = ctx[:cut] + tail.capitalize()
    return hellaswag_preprocess(f"{label}: {ctx}")


def hellaswag(**_) -> datasets.DatasetDict:
    with bz2.open(data_path("hellaswag", "hellaswag_val_full.txt.bz2"), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = []
    for i in range(0, len(lines) - 5, 6):
        label = int(lines[i + 1])
        rows.append({"query": _hellaswag_query(lines[i]), "choices": [hellaswag_preprocess(e) for e in lines[i + 2:i + 6]],
                     "gold": label, "label": label})
    return _splits(validation=rows)


# -- WikiText-2: the raw test file -> documents, as EleutherAI/wikitext_document_level does -------
def _is_title(line: str) -> bool:
    """A top-level heading ` = Title = ` (not ` = = Section = = `)."""
    s = line.strip()
    return s.startswith("= ") and s.endswith(" =") and not s.startswith("= =")


def wikitext_documents(text: str) -> list[str]:
    docs, current = [], []
    for line in text.split("\n"):
        if _is_title(line) and any(x.strip() for x in current):
            docs.append("\n".join(current))
            current = []
        current.append(line)
    if any(x.strip() for x in current):
        docs.append("\n".join(current))
    return docs


def wikitext(**_) -> datasets.DatasetDict:
    with open(data_path("wikitext2", "wiki.test.raw"), encoding="utf-8") as f:
        return _splits(test=[{"page": page} for page in wikitext_documents(f.read())])


# -- MMLU: the original CSVs (no header, letter answers) -> cais/mmlu columns -----------------
def _mmlu_rows(subject: str, split: str) -> list[dict]:
    with open(data_path("mmlu", "data", split, f"{subject}_{split}.csv"), encoding="utf-8", newline="") as f:
        return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans.strip())}
                for q, a, b, c, d, ans in csv.reader(f)]


def mmlu(subject: str = "", **_) -> datasets.DatasetDict:
    if not subject:
        raise ValueError("the mmlu loader needs dataset_kwargs: {subject: <name>}")
    return _splits(test=_mmlu_rows(subject, "test"), dev=_mmlu_rows(subject, "dev"))


# -- a generated task for the demo: no data files, deterministic ------------------------------
def demo_sequences(**_) -> datasets.DatasetDict:
    """Continue an arithmetic sequence: 'Sequence: 3, 7, 11, 15,' -> ' 19'."""
    def rows(start: int, n: int) -> list[dict]:
        out = []
        for i in range(start, start + n):
            first, step = (i * 7) % 23 + 1, i % 5 + 1
            terms = [first + k * step for k in range(5)]
            out.append({"prompt": "Sequence: " + ", ".join(map(str, terms[:4])) + ",", "answer": str(terms[4])})
        return out

    return _splits(test=rows(0, 40), train=rows(100, 10))
