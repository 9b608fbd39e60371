"""The measurement sub-commands that were scripts: planner-table, check-planner, compression-accuracy."""
import json
import os
import shutil

import pytest

from flexgen_core import ModelSpec, Policy
from flexgen_core.planning.cost_model import estimate
from flexgen_eval.bench import compression_accuracy, planner_check, planner_families, planner_table
from flexgen_eval.cli import build_parser, run_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_planner_table_beats_or_matches_the_paper_policies_that_fit_its_margin(tmp_path):
    args = build_parser().parse_args(["planner-table", "--out-dir", str(tmp_path)])
    assert run_command(args) == 0
    report = json.loads((tmp_path / "planner.json").read_text())
    planned = [row for row in report["rows"] if "plan" in row]  # the rest are notes (the paper's SSD)
    assert report["command"] == "flexgen-eval planner-table" and len(planned) == len(planner_table.PAPER)
    compared = 0
    for row in planned:
        ours = row["plan"]["estimate"]["throughput_tokens_per_s"]
        theirs = row["paper_policy_estimate"]["throughput_tokens_per_s"]
        usable, peak = row["plan"]["usable_bytes"], row["paper_policy_estimate"]["peak_memory_bytes"]
        if all(peak[t] <= usable[t] for t in usable):  # the paper's policy within the planner's 10% margin
            assert ours >= theirs * (1 - 1e-6), (row["model"], row["precision"])
            compared += 1
    assert compared >= 2  # opt-6.7b fp16 and opt-30b 4-bit; the others need more than 90% of a tier
    assert "| opt-175b |" in (tmp_path / "planner.md").read_text()


def test_planner_families_rows_are_what_their_plan_commands_print(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(planner_families, "WORKLOADS", ((1536, 16),))
    args = build_parser().parse_args(["planner-families", "--out-dir", str(tmp_path),
                                      "--models", "gemma-3-27b,pythia-12b"])
    assert run_command(args) == 0
    report = json.loads((tmp_path / "planner_families.json").read_text())
    assert [(r["model"], r["hardware"]) for r in report["rows"]] == [
        ("gemma-3-27b", "t4"), ("gemma-3-27b", "a100-80g"), ("pythia-12b", "t4"), ("pythia-12b", "a100-80g")]
    a100 = report["rows"][1]
    assert a100["command"].endswith("--cpu-mem 200GiB --disk 1.5TB")  # the preset names only its GPU
    capsys.readouterr()
    assert run_command(build_parser().parse_args(a100["command"].split()[1:] + ["--json"])) == 0
    assert json.loads(capsys.readouterr().out) == a100["plan"]
    # 52 of Gemma 3's 62 layers keep 1024 of the 1552 positions; Pythia's 36 keep all
    assert a100["kv_cache_per_sequence_bytes"] == 2 * 16 * 128 * 2 * (52 * 1024 + 10 * 1552)
    assert report["rows"][2]["kv_cache_per_sequence_bytes"] == 2 * 5120 * 2 * 36 * 1552
    assert "| gemma-3-27b | gemma3 | 27.0 B | t4 | 1536+16 |" in (tmp_path / "planner_families.md").read_text()


def test_check_planner_grid_and_its_fit_rule():
    names = [name for name, _ in planner_check.grid()]
    assert len(names) == len(set(names)) == 12
    policies = [Policy(**kw) for _, kw in planner_check.grid()]  # every one a valid policy
    assert all(p.weights[2] >= 80 for p in policies)  # all of them stream from disk
    est = estimate(ModelSpec.from_name("opt-125m"), policies[0], 64, 8, "cpu", 4)
    roomy = {t: 10 * max(v, 1 << 20) for t, v in est.peak_memory.items()}
    assert planner_check.policy_fits(est, roomy, 0.1)
    assert not planner_check.policy_fits(est, {**roomy, "gpu": est.peak_memory["gpu"]}, 0.1)


def test_check_planner_renders_a_recorded_run(tmp_path):
    recorded = os.path.join(REPO, "results", "planner_cpu.json")
    args = build_parser().parse_args(["check-planner", "--render-from", recorded, "--out", str(tmp_path / "p")])
    assert run_command(args) == 0
    assert (tmp_path / "p.md").read_text().startswith("#")


class _Chars:
    """A tokenizer of one id per character, enough to check how contexts and continuations split."""

    def encode(self, text):
        return [ord(c) for c in text]


def test_compression_accuracy_pairs_and_metrics():
    ctx, cont = compression_accuracy.encode_pair(_Chars(), "the end ", "word")
    assert ctx == [ord(c) for c in "the end"] and cont == [ord(c) for c in " word"]  # the space moves over
    docs = {0: (-1.0, True), 1: (-3.0, False)}
    m = compression_accuracy.lambada_metrics(docs, [0, 1])
    assert m["acc"] == 0.5 and m["ppl"] == pytest.approx(2.718281828 ** 2)
    assert compression_accuracy.lambada_metrics(docs, [])["acc"] is None
    w = compression_accuracy.wiki_metrics({0: (-4.0, 2), 1: (-2.0, 2)}, [0, 1])
    assert w["tokens"] == 4 and w["ppl"] == pytest.approx(2.718281828 ** 1.5)
    mean, se = compression_accuracy.paired_acc_delta(docs, {0: (-1.0, False), 1: (-3.0, False)}, [0, 1])
    assert mean == -50.0 and se == pytest.approx(50.0)


def test_compression_accuracy_refuses_what_it_cannot_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FLEXGEN_DATA_DIR", raising=False)
    assert run_command(build_parser().parse_args(["compression-accuracy", "--configs", "both-2bit"])) == 1
    assert "unknown config(s) ['both-2bit']" in capsys.readouterr().err
    assert run_command(build_parser().parse_args(["compression-accuracy", "--configs", "both-4bit"])) == 1
    assert "FLEXGEN_DATA_DIR is not set" in capsys.readouterr().err


def test_compression_accuracy_renders_a_recorded_run(tmp_path):
    recorded = tmp_path / "compression.json"
    shutil.copy(os.path.join(REPO, "results", "compression.json"), recorded)
    md, out = tmp_path / "c.md", tmp_path / "c.json"
    args = build_parser().parse_args(["compression-accuracy", "--render-from", str(recorded), "--md", str(md),
                                      "--json", str(out)])
    assert run_command(args) == 0
    assert "both-4bit" in md.read_text() and json.loads(out.read_text())["meta"]["configs"]
