"""The side-by-side harnesses (`flexgen-eval compare-helm`, `compare-lm-eval`): what they read from a
run's logs and outputs, what they report, and how they refuse bad input."""
import json
import os

import pytest

from flexgen_eval.bench import helm_compare, lm_eval_compare
from flexgen_eval.cli import build_parser, run_command

# the shape of a real `helm-run` log (HELM's hierarchical logger), two run specs in one run
HELM_LOG = """\
2026-12-01 20:49:51,478 INFO       Running mmlu:subject=abstract_algebra,method=multiple_choice_joint,model=flexgen_x {
2026-12-01 20:49:53,030 INFO         BatchingExecutor.execute {
2026-12-01 20:49:53,713 INFO           flexgen: /models/x (planned: ...) ready in 0.68s
2026-12-01 20:50:04,553 INFO           flexgen: batch of 100 requests (generate 100x1 (max_tokens=1)) in 10.78s
2026-12-01 20:50:04,554 INFO           BatchingExecutor.execute {
2026-12-01 20:50:04,629 INFO           } [0.075s]
2026-12-01 20:50:04,629 INFO         } [11.599s]
2026-12-01 20:50:05,000 INFO       } [13.5s]
2026-12-01 20:50:05,001 INFO       Running synthetic_reasoning:mode=pattern_match,model=flexgen_x {
2026-12-01 20:50:07,000 INFO         BatchingExecutor.execute {
2026-12-01 20:50:35,200 INFO           flexgen: batch of 100 requests (generate 100x1 (max_tokens=50)) in 28.09s
2026-12-01 20:50:35,300 INFO         } [28.191s]
2026-12-01 20:51:05,000 INFO       } [1m2.5s]
"""


def test_helm_log_durations_and_blocks():
    assert helm_compare._duration("0.805s") == pytest.approx(0.805)
    assert helm_compare._duration("1m2.788s") == pytest.approx(62.788)
    assert helm_compare._duration("1h2m3.4s") == pytest.approx(3723.4)
    assert helm_compare._duration("12ms") == pytest.approx(0.012)
    with pytest.raises(ValueError, match="unexpected duration"):
        helm_compare._duration("soon")
    assert helm_compare._execute_seconds(HELM_LOG) == pytest.approx(11.599)  # the outer block, not the nested one
    assert helm_compare._load_seconds(HELM_LOG) == pytest.approx(0.68)
    per_spec = helm_compare._per_run_spec(HELM_LOG)
    assert per_spec == {"mmlu:subject=abstract_algebra,method=multiple_choice_joint,model=flexgen_x": 11.599,
                        "synthetic_reasoning:mode=pattern_match,model=flexgen_x": 28.191}
    assert helm_compare._entry_of(next(iter(per_spec)), helm_compare.ENTRIES["mmlu_joint"])
    assert not helm_compare._entry_of(next(iter(per_spec)), helm_compare.ENTRIES["mmlu_separate"])


def test_one_run_report_gives_ratios_against_the_first_config():
    report = {"date": "2026-12-01", "machine": "m", "command": "flexgen-eval compare-helm --one-run",
              "max_eval_instances": 100, "gpu_batch_size": None,
              "one_run": {"entries": {"mmlu_joint": "mmlu:...", "synthetic_reasoning": "synthetic_reasoning:..."},
                          "timings": {"hf-n4": {"wall_s": 120.0, "command": "helm-run a", "batches": [],
                                                "per_entry_execute_s": {"mmlu_joint": 40.0, "synthetic_reasoning": 70.0}},
                                      "flexgen-batched": {"wall_s": 48.0, "command": "helm-run b", "batches": [100, 100],
                                                          "per_entry_execute_s": {"mmlu_joint": 10.0,
                                                                                  "synthetic_reasoning": 28.0}}},
                          "comparison": {}}}
    text = helm_compare.markdown(report)
    assert "| flexgen-batched | 48.0 | 10.0 | 28.0 | 2.50x | 4.00x | 2.50x |" in text
    assert "planned at load" in text
    assert "one per run spec" in text


def test_run_dirs_are_found_by_entry(tmp_path):
    runs = tmp_path / "out" / "runs" / "all-hf"
    for name in ("mmlu:subject=abstract_algebra,method=multiple_choice_joint,model=x",
                 "synthetic_reasoning:mode=pattern_match,model=x", "eval_cache"):
        (runs / name).mkdir(parents=True)
    found = helm_compare.run_dir(str(tmp_path), "all-hf", helm_compare.ENTRIES["synthetic_reasoning"])
    assert found.endswith("synthetic_reasoning:mode=pattern_match,model=x")
    with pytest.raises(ValueError):  # two run dirs and no entry named: ambiguous
        helm_compare.run_dir(str(tmp_path), "all-hf")


def test_lm_eval_commands_and_comparisons(tmp_path):
    planned = lm_eval_compare.lm_eval_command("flexgen", "pretrained=x", "a,b", 300, str(tmp_path), None)
    assert "--batch_size" not in planned and planned[planned.index("--tasks") + 1] == "a,b"
    fixed = lm_eval_compare.lm_eval_command("hf", "pretrained=x", "a", 10, str(tmp_path), 16, num_fewshot=5)
    assert fixed[fixed.index("--batch_size") + 1] == "16" and fixed[fixed.index("--num_fewshot") + 1] == "5"
    a = [{"resps": [[["-1.5", "True"]]]}, {"resps": [[["-2.0", "False"]]]}]
    b = [{"resps": [[["-1.50001", "True"]]]}, {"resps": [[["-2.0", "True"]]]}]
    worst, mismatched = lm_eval_compare.sample_difference(a, b)
    assert worst == pytest.approx(1e-5) and mismatched == 1
    assert lm_eval_compare.same_metrics({"acc": 0.5, "name": "t"}, {"acc": 0.5 + 1e-9, "name": "t"})
    assert not lm_eval_compare.same_metrics({"acc": 0.5}, {"acc": 0.51})


@pytest.mark.parametrize("argv, message", [
    (["compare-lm-eval", "--tasks", "no_such_task"], "unknown task 'no_such_task'"),
    (["compare-helm", "--data-dir", ""], "FLEXGEN_DATA_DIR"),
])
def test_bad_input_is_one_clear_error(argv, message, monkeypatch, capsys):
    monkeypatch.setenv("FLEXGEN_DATA_DIR", "/nonexistent-but-set")
    args = build_parser().parse_args(argv)
    assert run_command(args) == 1
    assert message in capsys.readouterr().err


def test_reports_are_written_after_each_task(tmp_path, monkeypatch):
    """compare-lm-eval rewrites its report after every task, so a cut run keeps what finished."""
    calls = []

    def fake_run(cmd, log_path):
        calls.append(cmd)
        out = cmd[cmd.index("--output_path") + 1]
        task = cmd[cmd.index("--tasks") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results_1.json"), "w") as f:
            json.dump({"results": {task: {"acc,none": 0.5, "alias": task}}}, f)
        with open(os.path.join(out, f"samples_{task}_1.jsonl"), "w") as f:
            f.write(json.dumps({"doc_id": 0, "resps": [[["-1.0", "True"]]]}) + "\n")
        return 1.0 if "hf" in cmd else 0.5

    monkeypatch.setattr(lm_eval_compare, "timed", fake_run)
    monkeypatch.setenv("FLEXGEN_DATA_DIR", str(tmp_path))
    args = build_parser().parse_args(["compare-lm-eval", "--model", str(tmp_path), "--tasks", "offline_arc_easy",
                                      "--scale", "0.01", "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "r" / "lm_eval_cpu.json").read_text())
    (row,) = report["runs"]
    assert row["speedup"] == pytest.approx(2.0) and row["identical_metrics"]
    assert len(calls) == 2 and "--batch_size" in calls[0]
