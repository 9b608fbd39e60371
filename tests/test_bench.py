"""`flexgen-eval bench`: argument handling, batch rules, and a tiny end-to-end run (JSON + plot).

No timing thresholds: the numbers of a tiny model on a shared CPU mean nothing."""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

import pytest

from flexgen_core.model.spec import ModelSpec
from flexgen_eval.bench import hf_models, runner, search, systems
from flexgen_eval.commands import bench as bench_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    parser = argparse.ArgumentParser(prog="flexgen-eval")
    bench_cmd.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def run_cli(argv) -> int:
    args = parse(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError):
        return 1


# -- arguments -----------------------------------------------------------------------------


def test_defaults_follow_the_paper_workload():
    cfg = bench_cmd.config_from_args(parse(["--model", "opt-30b", "--dummy-weights"]))
    assert (cfg.prompt_len, cfg.gen_len, cfg.repeat) == (512, 32, 3)
    assert cfg.systems == ("flexgen", "accelerate", "hf") and cfg.policy == "auto"
    assert cfg.out == "results/bench/opt-30b.json"
    assert cfg.cold_baseline_reads and cfg.alternate is None


def test_sizes_systems_and_policy_parse():
    cfg = bench_cmd.config_from_args(parse([
        "--model", "opt-1.3b", "--dummy-weights", "--gpu-mem", "16GiB", "--cpu-mem", "200GB", "--disk", "1.5TB",
        "--systems", "flexgen, accelerate,flexgen-0.1.8", "--policy", "20,80,0,100,0,100", "--gpu-batch-size", "48",
        "--num-gpu-batches", "3", "--cut-gen-len", "8", "--warm-baseline-reads", "--no-alternate",
        "--cpu-attention", "0.5"]))
    assert (cfg.gpu_mem, cfg.cpu_mem, cfg.disk) == (16 << 30, 200 * 10**9, 1500 * 10**9)
    assert cfg.systems == ("flexgen", "accelerate", "flexgen-0.1.8")
    assert not cfg.cold_baseline_reads and cfg.alternate is False and cfg.cpu_attention == 0.5
    cfg.validate()
    p = runner.percent_policy(cfg.policy, 48, 3)
    assert p.weights == (20, 80, 0) and p.cache == (0, 100, 0) and p.block_size == 144


@pytest.mark.parametrize("argv", [["--prompt-len", "0"], ["--gpu-mem", "lots"], ["--repeat", "x"],
                                  ["--device", "tpu"], ["--cpu-attention", "1.5"]])
def test_bad_flags_are_argparse_errors(argv):
    with pytest.raises(SystemExit):
        parse(["--model", "opt-1.3b", *argv])


@pytest.mark.parametrize("change,message", [
    ({"systems": ("flexgen", "deepspeed")}, "unknown systems"),
    ({"policy": "1,2,3"}, "six percentages"),
    ({"cut_gen_len": 40}, "cut-gen-len"),
])
def test_bad_config_is_one_clear_error(change, message):
    cfg = runner.BenchConfig(model="opt-1.3b", dummy_weights=True, gen_len=32, **change)
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_dry_run_chooses_batches_without_loading(capsys, tmp_path):
    out = tmp_path / "dry.json"
    rc = run_cli(["--model", "opt-30b", "--dummy-weights", "--device", "cuda", "--dtype", "float16",
                  "--gpu-mem", "16GiB", "--cpu-mem", "100GiB", "--disk", "40GiB", "--hardware", "t4",
                  "--systems", "flexgen,accelerate,flexgen-0.1.8", "--max-batch", "64", "--dry-run",
                  "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "dry run" in text and "flexgen-0.1.8" in text
    assert not out.exists()


# -- batch rules -----------------------------------------------------------------------------


def test_candidate_batches():
    assert search.candidate_batches(12) == [12, 8, 4, 2, 1]
    assert search.candidate_batches(1) == [1]


def test_accelerate_batch_shrinks_with_the_budget():
    spec = ModelSpec.from_name("opt-1.3b")
    big = search.Budget(gpu=10 << 30, cpu=10 << 30, disk=100 << 30, device="cpu")
    small = search.Budget(gpu=1 << 30, cpu=1 << 30, disk=100 << 30, device="cpu")
    cb = search.choose_accelerate(spec, big, 512, 32, 4, 64)
    cs = search.choose_accelerate(spec, small, 512, 32, 4, 64)
    assert cb.batch == 64 and cs.batch is not None and cs.batch < cb.batch
    assert cs.max_memory["cpu"] < cb.max_memory["cpu"]
    # every rejected batch says why
    assert all(why for _, why in cs.tried)
    none = search.choose_accelerate(spec, search.Budget(1 << 20, 1 << 20, 100 << 30, "cpu"), 512, 32, 4, 8)
    assert none.batch is None


def test_hf_fits_only_when_resident():
    spec = ModelSpec.from_name("opt-1.3b")
    assert search.hf_fits(spec, 8, search.Budget(8 << 30, 8 << 30, 0, "cpu"), 128, 8, 4)[0]
    assert not search.hf_fits(spec, 8, search.Budget(1 << 30, 1 << 30, 0, "cpu"), 128, 8, 4)[0]


def test_weight_bytes_match_the_hf_model(tiny_opt_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_opt_dir)
    spec = ModelSpec.from_dir(tiny_opt_dir)
    assert hf_models.weight_bytes(spec, 4) == sum(p.numel() * 4 for p in model.parameters())


def test_timing_pairs_runs_with_their_prefill_and_projects_decode():
    # batch 4, gen 32 timed for n = 8 tokens: decode = (T - P) * 31 / 7
    t = runner.timing("flexgen", 4, [10.0, 12.0], [17.0, 19.0], gen_len=32, n_run=8)
    assert t["prefill_paired"] and t["prefill_s"] == pytest.approx(11.0)
    assert t["decode_s"] == pytest.approx(7.0 * 31 / 7)
    assert t["throughput_runs"] == pytest.approx([128 / (10 + 31), 128 / (12 + 31)])
    # without a cut, throughput is generated tokens over the run's wall time, whatever the prefill
    full = runner.timing("hf", 2, [5.0, 50.0], [20.0, 30.0], gen_len=10, n_run=10)
    assert full["throughput_runs"][0] == pytest.approx(20 / 20.0)
    assert full["decode_clamped_runs"] == 1  # a prefill slower than its run: flagged
    # one prefill for several runs: its median is used for each
    single = runner.timing("hf", 1, [4.0], [8.0, 9.0], gen_len=5, n_run=5)
    assert not single["prefill_paired"] and single["decode_s"] == pytest.approx(4.5)


def test_timing_takes_the_prefill_a_run_timed_itself_where_the_system_reports_it():
    # the prefill-only runs took 10 s, but inside the runs (writing the KV cache) 13 and 14 s:
    # decode = (T - in-run prefill) * 31 / 7, throughput over the in-run prefill + that decode
    t = runner.timing("flexgen", 4, [10.0, 10.0], [20.0, 21.0], gen_len=32, n_run=8, in_run_prefills=[13.0, 14.0])
    assert t["prefill_from"] == "the run's own first step" and t["prefill_s"] == pytest.approx(13.5)
    assert t["decode_s"] == pytest.approx(7.0 * 31 / 7)
    assert t["throughput_runs"] == pytest.approx([128 / (13 + 31), 128 / (14 + 31)])
    row = {"run_details": [{"step_seconds": [[6.0, 1.0, 1.0], [7.0, 1.0]]}, {"step_seconds": [[8.0, 2.0]]}]}
    assert runner.in_run_prefills(row) == [13.0, 8.0]  # the first step of each block
    assert runner.in_run_prefills({"run_details": [{"experts_read": {}}]}) is None


def test_random_prompts_have_the_exact_length():
    prompts = runner.random_prompts(3, 17, 320, seed=1)
    assert len(prompts) == 3 and all(len(p) == 17 for p in prompts)
    assert all(80 <= t < 320 for p in prompts for t in p)
    assert prompts == runner.random_prompts(3, 17, 320, seed=1)


# -- FlexGen 0.1.8 (GPU only: here only its plumbing) -----------------------------------------------


def test_flexgen018_log_parsing_and_command(tmp_path):
    log = ("model size: 55.803 GB\tcache size: 13.312 GB\thidden size (p): 0.221 GB\n"
           "peak gpu mem: 12.250 GB\tprojected: True\n"
           "prefill latency: 50.123 s\tprefill throughput: 1470.5 token/s\n"
           "decode latency: 80.5 s\tdecode throughput: 55.4 token/s\n"
           "total latency: 130.6 s\ttotal throughput: 35.3 token/s")
    parsed = systems.parse_flexgen_log(log)
    assert parsed["prefill_latency"] == pytest.approx(50.123) and parsed["decode_latency"] == pytest.approx(80.5)
    assert parsed["projected"] and parsed["gpu_peak_mem"] == pytest.approx(12.25 * 2**30)
    with pytest.raises(RuntimeError):
        systems.parse_flexgen_log("nothing here")
    fg = systems.FlexGen018(ModelSpec.from_name("opt-30b"), None, str(tmp_path), 0.1145, 512, 32, 8)
    cmd = fg.command("x.log")
    assert fg.batch == 64  # the suite placement at a 32x2 block (fits a 100 GiB CPU budget)
    assert cmd[cmd.index("--memory-fraction") + 1] == "0.114500"
    assert "--cut-gen-len" in cmd and cmd[cmd.index("--model") + 1] == "facebook/opt-30b"
    assert "_DUMMY_" in cmd
    with pytest.raises(ValueError):
        systems.FlexGen018(ModelSpec.from_name("llama-2-7b-hf"), None, str(tmp_path), None, 512, 32, None)


def test_flexgen018_stub_tokenizer_pads_to_length():
    from flexgen_eval.bench.flexgen018_driver import StubTokenizer

    ids = StubTokenizer()(["Paris is the capital city of"], padding="max_length", max_length=32).input_ids
    assert len(ids) == 1 and len(ids[0]) == 32 and ids[0][0] == StubTokenizer.pad_token_id


# -- a tiny end-to-end run ---------------------------------------------------------------------


def test_tiny_run_writes_json_with_the_fields_and_a_plot(tiny_opt_dir, tmp_path, capsys):
    out = tmp_path / "tiny.json"
    # 600 KB of RAM for a 560 KB model: the planner sends most weights to disk, accelerate offloads
    # part, and HF generate is resident only at batch 1.
    rc = run_cli(["--model", tiny_opt_dir, "--prompt-len", "12", "--gen-len", "3", "--gpu-mem", "300KB",
                  "--cpu-mem", "300KB", "--disk", "1GB", "--max-batch", "4", "--hf-batch", "1", "--repeat", "1",
                  "--hardware", "cpu", "--offload-dir", str(tmp_path / "off"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| flexgen |" in printed and "flexgen_vs_accelerate" in printed
    res = json.loads(out.read_text())
    for key in ("model", "prompt_len", "gen_len", "budget_bytes", "hardware_profile", "plan", "estimate", "systems",
                "ratios", "command", "machine", "date", "baseline_disk_reads"):
        assert key in res, key
    rows = {r["system"]: r for r in res["systems"]}
    assert set(rows) == {"flexgen", "accelerate", "hf"}
    for name, row in rows.items():
        assert not row["skipped"], (name, row["skipped"])
        for key in ("batch", "throughput_tokens_per_s", "prefill_s", "decode_s", "latency_s", "peak_memory_bytes"):
            assert row[key] is not None, (name, key)
        assert row["throughput_tokens_per_s"] > 0
    ours = rows["flexgen"]
    assert ours["batch"] == res["plan"]["policy"]["gpu_batch_size"] * res["plan"]["policy"]["num_gpu_batches"]
    assert ours["policy"] and ours["predicted_throughput_tokens_per_s"] > 0
    assert ours["weights_percent"]["disk"] >= 50
    assert ours["peak_memory_bytes"]["disk_bytes_read_tiers"] > 0  # the runtime read its disk tier
    steps = [block for run in ours["run_details"] for block in run["step_seconds"]]
    assert [len(block) for block in steps] == [3] and all(s > 0 for s in steps[0])  # prefill + 2 decode steps
    # ours' prefill is its run's first step, with no prefill-only run; the baselines' come from theirs
    assert ours["prefill_from"] == "the run's own first step" and ours["prefill_seconds"] == []
    assert ours["prefill_s"] == pytest.approx(steps[0][0])
    assert rows["accelerate"]["prefill_from"] == "prefill-only runs" and len(rows["accelerate"]["prefill_seconds"]) == 1
    assert rows["accelerate"]["weights_percent"]["disk"] > 0
    assert rows["hf"]["batch"] == 1
    assert set(res["ratios"]) == {"flexgen_vs_accelerate", "flexgen_vs_hf"}
    png = tmp_path / "tiny.png"
    assert png.exists() and png.stat().st_size > 1000
    assert "| accelerate |" in runner.table(res)


def test_a_system_out_of_memory_in_a_timed_run_loses_nothing_else(tiny_opt_dir, tmp_path, monkeypatch):
    """An out-of-memory error in one system's timed run is that system's result (skipped, with the
    reason); the systems before and after it still run and the JSON is written."""
    import torch

    from flexgen_eval.bench import systems

    real = systems.Ours.generate

    def fails_on_the_long_run(self, prompts, new_tokens):
        if new_tokens > 2:  # the timed run (3 tokens), not the warm-up (2) or the prefill (1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 MiB.")
        return real(self, prompts, new_tokens)

    monkeypatch.setattr(systems.Ours, "generate", fails_on_the_long_run)
    out = tmp_path / "oom.json"
    cfg = runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=3, gpu_mem="300KB", cpu_mem="300KB",
                             disk="1GB", systems=("flexgen", "accelerate"), max_batch=4, repeat=1, hardware="cpu",
                             offload_dir=str(tmp_path / "off"), out=str(out), alternate=False)
    res = runner.Bench(cfg, log=lambda *_: None).run()
    rows = {r["system"]: r for r in res["systems"]}
    assert "out of memory in a timed run" in rows["flexgen"]["skipped"]
    assert rows["flexgen"].get("throughput_tokens_per_s") is None
    assert not rows["accelerate"]["skipped"] and rows["accelerate"]["throughput_tokens_per_s"] > 0


@pytest.mark.parametrize("on_cuda", [False, True])
def test_warm_up_runs_a_decode_step(tiny_opt_dir, tmp_path, monkeypatch, on_cuda):
    """The warm-up generates 2 tokens, so the KV cache is allocated (pinned, on CUDA) before the
    timed runs: allocating it inside the one timed run made ours' OPT-30B steps look 3x slower. On
    CUDA ours keeps its page-locked host buffers by exact size, so its warm-up generates the timed
    run's tokens (a 2-token cache is too short to be reused)."""
    from flexgen_eval.bench import systems

    asked, real, real_init = [], systems.Ours.generate, systems.Ours.__init__

    def recorded(self, prompts, new_tokens):
        asked.append(new_tokens)
        return real(self, prompts, new_tokens)

    def built(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        assert self.warm_to_run_length is False  # a CPU device here
        self.warm_to_run_length = on_cuda

    monkeypatch.setattr(systems.Ours, "generate", recorded)
    monkeypatch.setattr(systems.Ours, "__init__", built)
    cfg = runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=4, gpu_mem="300KB", cpu_mem="300KB",
                             disk="1GB", systems=("flexgen",), max_batch=4, repeat=1, hardware="cpu",
                             offload_dir=str(tmp_path / "off"), out=str(tmp_path / "w.json"), alternate=False)
    runner.Bench(cfg, log=lambda *_: None).run()
    assert asked == ([4, 4] if on_cuda else [2, 4])  # warm-up, run: no prefill-only run (its own step times it)


def test_systems_run_in_the_order_named(tiny_opt_dir, tmp_path):
    order = []
    cfg = runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=3, gpu_mem="300KB", cpu_mem="300KB",
                             disk="1GB", systems=("accelerate", "flexgen"), max_batch=4, repeat=1, hardware="cpu",
                             offload_dir=str(tmp_path / "off"), out=str(tmp_path / "o.json"), alternate=False)
    bench = runner.Bench(cfg, log=lambda line: order.append(line.split()[0]) if " warmup " in line else None)
    bench.run()
    assert order == ["accelerate", "flexgen"]


def test_unfit_systems_are_skipped_with_a_reason(tiny_opt_dir, tmp_path):
    cfg = runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=3, gpu_mem="400KB", cpu_mem="400KB",
                             disk="1GB", systems=("flexgen", "hf", "flexgen-0.1.8"), max_batch=4, hf_batch=256,
                             repeat=1, hardware="cpu", dry_run=True, offload_dir=str(tmp_path))
    res = runner.Bench(cfg, log=lambda *_: None).run()
    rows = {r["system"]: r for r in res["systems"]}
    assert rows["hf"]["skipped"].startswith("not resident")
    assert rows["flexgen-0.1.8"]["skipped"]  # no CUDA here (or not OPT-30B/6.7B)
    assert "| hf |" in runner.table(res)


def test_module_entry_point_and_gpu_script_dry_run(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_bench.sh"), "--dry-run", "--models", "opt-30b"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "opt-30b" in proc.stdout and "--cap-gpu" in proc.stdout and "flexgen-0.1.8" in proc.stdout
    bad = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_bench.sh"), "--bogus"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert subprocess.run([sys.executable, "-m", "flexgen_eval.bench", "--help"], cwd=ROOT, capture_output=True,
                          timeout=60).returncode == 0


def test_page_cache_hooks_sit_on_modules_that_run():
    """A device map may send a whole ModuleList to disk; a ModuleList is never called, so the
    eviction hooks must go on the layers inside it."""
    import torch

    from flexgen_eval.bench.systems import _called_modules

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model, fired = Model(), []
    for module in _called_modules(model.layers):
        module.register_forward_hook(lambda *_: fired.append(1))
    model(torch.zeros(1, 2))
    assert len(fired) == 2


def test_report_judges_each_device_by_its_own_targets():
    """Issue 8: on a CPU ours >= 1.5x accelerate and >= 1x HF generate; on a GPU (OPT-30B at a 16 GiB
    cap) >= 20x accelerate and >= 1.5x FlexGen 0.1.8, and no target for other GPU models."""
    from flexgen_eval.bench.report import target_for

    cpu = {"device": "cpu", "model": "opt-1.3b"}
    gpu = {"device": "cuda", "model": "opt-30b"}
    assert (target_for("accelerate", cpu), target_for("hf", cpu)) == (1.5, 1.0)
    assert (target_for("accelerate", gpu), target_for("flexgen-0.1.8", gpu)) == (20.0, 1.5)
    assert target_for("accelerate", {"device": "cuda", "model": "opt-6.7b"}) is None


def test_compressed_ours_runs_beside_the_exact_one(tiny_opt_dir, tmp_path, monkeypatch):
    """`flexgen-c` (the paper's FlexGen (c)) is planned and built with 4-bit weights and cache, is
    compared with the baselines on its own, and leaves the exact system's plan and ratios alone."""
    from flexgen_eval.bench import report, systems

    built, real = {}, systems.Ours.__init__

    def recorded(self, *args, **kwargs):
        real(self, *args, **kwargs)
        built[self.name] = (self.llm.policy.compress_weight, self.llm.policy.compress_cache)

    monkeypatch.setattr(systems.Ours, "__init__", recorded)
    cfg = runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=3, gpu_mem="400KB", cpu_mem="400KB",
                             disk="1GB", systems=("flexgen", "flexgen-c", "accelerate"), max_batch=4, repeat=1,
                             hardware="cpu", offload_dir=str(tmp_path / "off"), out=str(tmp_path / "c.json"),
                             alternate=False)
    res = runner.Bench(cfg, log=lambda *_: None).run()
    assert built == {"flexgen": (False, False), "flexgen-c": (True, True)}
    rows = {r["system"]: r for r in res["systems"]}
    assert not res["plan"]["policy"]["compress_weight"] and not res["plan"]["policy"]["compress_cache"]
    assert rows["flexgen-c"]["plan"]["policy"]["compress_weight"] and rows["flexgen-c"]["plan"]["policy"]["compress_cache"]
    assert set(res["ratios"]) == {"flexgen_vs_accelerate", "flexgen-c_vs_accelerate"}
    for name in ("flexgen", "flexgen-c"):
        assert rows[name]["throughput_tokens_per_s"] > 0 and rows[name]["percent_of_predicted"] > 0
        assert res["ratios"][f"{name}_vs_accelerate"] == pytest.approx(
            rows[name]["throughput_tokens_per_s"] / rows["accelerate"]["throughput_tokens_per_s"])
    assert "| flexgen-c |" in runner.table(res)
    assert "flexgen-c: " in report.summary([("c.json", res)])
    assert runner.resummarize(json.loads(json.dumps(res)))["ratios"] == pytest.approx(res["ratios"])


def test_a_system_whose_plan_cannot_fit_is_skipped_with_the_planners_reason(tiny_opt_dir, tmp_path):
    """300 KB + 300 KB holds the exact system (weights on disk) but not the compressed one, whose two
    dequantised layers must sit on the device: flexgen-c is skipped, saying why; the others still run."""
    cfg = runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=3, gpu_mem="300KB", cpu_mem="300KB",
                             disk="1GB", systems=("flexgen", "flexgen-c", "accelerate"), max_batch=4, repeat=1,
                             hardware="cpu", dry_run=True, offload_dir=str(tmp_path))
    res = runner.Bench(cfg, log=lambda *_: None).run()
    rows = {r["system"]: r for r in res["systems"]}
    assert "does not fit the memory budget" in rows["flexgen-c"]["skipped"]
    assert not rows["flexgen"]["skipped"] and rows["flexgen"]["batch"] >= 1
    assert not rows["accelerate"]["skipped"] and res["plan"] is not None
    assert "| flexgen-c | - |" in runner.table(res)


def test_the_offload_directory_the_bench_made_is_removed(tiny_opt_dir, tmp_path, monkeypatch):
    """The bench's own temporary directory holds ours' disk weights and accelerate's offload: it is
    removed when the run ends, also when a system fails; a directory the user names is kept, since
    ours reuses the weights stored there (leaked directories filled a disk, tens of GB for OPT-30B)."""
    import tempfile

    from flexgen_eval.bench import systems

    made = tmp_path / "tmp"
    made.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(made))
    kept = tmp_path / "named"

    def config(offload_dir, out):
        return runner.BenchConfig(model=tiny_opt_dir, prompt_len=12, gen_len=3, gpu_mem="300KB", cpu_mem="300KB",
                                  disk="1GB", systems=("flexgen", "accelerate"), max_batch=4, repeat=1,
                                  hardware="cpu", offload_dir=offload_dir, out=str(tmp_path / out), alternate=False)

    bench = runner.Bench(config(None, "a.json"), log=lambda *_: None)
    own = bench.offload_dir
    assert os.path.dirname(own) == str(made)
    res = bench.run()
    assert all(r["throughput_tokens_per_s"] > 0 for r in res["systems"])
    assert not os.path.exists(own)

    runner.Bench(config(str(kept), "b.json"), log=lambda *_: None).run()
    assert list(kept.glob("weights/*/*.bin")), "ours stored no disk weights: the budget no longer tests this"

    def fails(self, prompts, new_tokens):
        raise RuntimeError("a system failed")

    monkeypatch.setattr(systems.Ours, "generate", fails)
    bench = runner.Bench(config(None, "c.json"), log=lambda *_: None)
    with pytest.raises(RuntimeError, match="a system failed"):
        bench.run()
    assert not os.path.exists(bench.offload_dir)
    assert kept.exists()


@pytest.mark.parametrize("config", [
    dict(model_type="llama", tie_word_embeddings=True),
    dict(model_type="olmoe", num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    dict(model_type="opt", word_embed_proj_dim=64, ffn_dim=128, do_layer_norm_before=True),
], ids=["llama-tied", "olmoe", "opt"])
def test_a_dummy_hf_checkpoint_is_written_tensor_by_tensor_and_loads_with_every_key(config, tmp_path, monkeypatch):
    """accelerate's checkpoint, written from our layers' keys in shards: HF loads it missing nothing."""
    import torch
    from transformers import AutoModelForCausalLM

    from flexgen_core.model import spec as spec_module

    base = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if config["model_type"] == "opt":
        base = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    monkeypatch.setitem(spec_module.BUILTIN_CONFIGS, "tiny-dummy", {**base, **config})
    monkeypatch.setattr(hf_models, "SHARD_BYTES", 64 << 10)  # several shards
    spec = ModelSpec.from_name("tiny-dummy")
    path = hf_models.dummy_checkpoint(spec, torch.bfloat16, str(tmp_path))
    assert len(glob.glob(os.path.join(path, "*.safetensors"))) > 1
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert sum(p.numel() for p in model.parameters()) == hf_models.weight_bytes(spec, 1)
    assert hf_models.dummy_checkpoint(spec, torch.bfloat16, str(tmp_path)) == path  # built once
