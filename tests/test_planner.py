import argparse
import itertools
import json

import pytest

from flexgen_core import ModelSpec, Policy
from flexgen_core.planning.cost_model import estimate
from flexgen_core.planning.planner import InfeasibleBudget, plan_policy
from flexgen_core.units import parse_size

T4_BOX = {"gpu": "16GiB", "cpu": "200GiB", "disk": "1.5TB"}
SMALL_GRID = dict(gpu_batch_sizes=(1, 2, 4, 8, 16, 32, 64), num_gpu_batches=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def opt30_plan():
    return plan_policy(ModelSpec.from_name("opt-30b"), 512, 32, T4_BOX, "t4")


def fits(plan, budget):
    return all(plan.peak_memory[t] <= parse_size(budget.get(t, 0)) * (1 - plan.margin) * 1.0001
               for t in ("gpu", "cpu", "disk"))


def test_opt30b_on_t4_keeps_weights_off_disk(opt30_plan):
    p = opt30_plan.policy
    assert p.weights[2] == 0 and p.activations[2] == 0  # 60 GB of weights fit in 200 GiB of CPU memory
    assert fits(opt30_plan, T4_BOX)
    assert opt30_plan.throughput > 1.0
    assert p.block_size > 8  # offloading pays only with large blocks


def test_opt30b_on_t4_splits_attention_between_the_cpu_and_the_link(opt30_plan):
    """The CPU attending part of the cache while the link brings the rest beats either alone."""
    spec = ModelSpec.from_name("opt-30b")
    assert 0 < opt30_plan.policy.cpu_attention < 1
    for share in (0.0, 1.0):
        alone = plan_policy(spec, 512, 32, T4_BOX, "t4", cpu_attention=share)
        assert alone.policy.cpu_attention == share
        assert opt30_plan.throughput > alone.throughput * 1.05


def test_percentages_sum_to_100(opt30_plan):
    for split in (opt30_plan.policy.weights, opt30_plan.policy.cache, opt30_plan.policy.activations):
        assert sum(split) == pytest.approx(100.0, abs=1e-9)
        assert all(0 <= v <= 100 for v in split)


def test_plan_reports_what_the_cost_model_says(opt30_plan):
    again = estimate(ModelSpec.from_name("opt-30b"), opt30_plan.policy, 512, 32, "t4")
    assert again.throughput == pytest.approx(opt30_plan.throughput)
    assert opt30_plan.prefill_time + opt30_plan.decode_time == pytest.approx(again.total_time)
    text = opt30_plan.describe()
    for words in ("token/s", "binding", "gpu", "block", "prefill", "decode"):
        assert words in text
    assert json.loads(json.dumps(opt30_plan.to_dict()))["policy"]["gpu_batch_size"] == opt30_plan.policy.gpu_batch_size


def test_opt175b_streams_weights_from_disk_and_fits():
    plan = plan_policy(ModelSpec.from_name("opt-175b"), 512, 32, T4_BOX, "t4")
    assert plan.policy.weights[2] > 0  # 350 GB of fp16 weights cannot sit in 200 GiB of CPU memory
    assert fits(plan, T4_BOX)


def test_planner_beats_every_hand_policy_in_a_grid():
    """Brute force over placements in 25% steps and a few block shapes: none beats the plan."""
    spec, budget = ModelSpec.from_name("opt-1.3b"), {"gpu": "2GiB", "cpu": "8GiB", "disk": "50GB"}
    plan = plan_policy(spec, 256, 16, budget, "t4", **SMALL_GRID)
    limits = {t: parse_size(budget[t]) * 0.9 for t in budget}
    splits = [(g, c, 100 - g - c) for g in range(0, 101, 25) for c in range(0, 101 - g, 25)]
    best = 0.0
    for w, c, (b, k), attn in itertools.product(splits, splits, ((4, 1), (8, 2), (16, 4), (32, 8)), (0, 0.5, 1)):
        policy = Policy(weights=w, cache=c, activations=(0, 100, 0), gpu_batch_size=b, num_gpu_batches=k,
                        cpu_attention=attn)
        est = estimate(spec, policy, 256, 16, "t4")
        if all(est.peak_memory[t] <= limits[t] for t in limits):
            best = max(best, est.throughput)
    assert best > 0
    assert plan.throughput >= best * (1 - 1e-6)


def test_more_gpu_memory_never_lowers_predicted_throughput():
    spec = ModelSpec.from_name("opt-6.7b")
    speeds = [plan_policy(spec, 512, 32, {**T4_BOX, "gpu": f"{g}GiB"}, "t4", **SMALL_GRID).throughput
              for g in (2, 4, 8, 12, 16, 24, 40)]
    assert all(b >= a * (1 - 1e-6) for a, b in zip(speeds, speeds[1:])), speeds
    assert speeds[-1] > speeds[0]


def test_more_cpu_memory_never_lowers_predicted_throughput():
    spec = ModelSpec.from_name("opt-13b")
    speeds = [plan_policy(spec, 512, 32, {**T4_BOX, "cpu": f"{c}GiB"}, "t4", **SMALL_GRID).throughput
              for c in (8, 16, 32, 64, 128)]
    assert all(b >= a * (1 - 1e-6) for a, b in zip(speeds, speeds[1:])), speeds


@pytest.mark.parametrize("memory, tier", [
    ({"gpu": "1GiB", "cpu": "200GiB", "disk": "1.5TB"}, "gpu"),
    ({"gpu": "16GiB", "cpu": "10GiB"}, "cpu"),
    ({"gpu": "16GiB", "cpu": "10GiB", "disk": "20GB"}, "disk"),
])
def test_infeasible_budget_names_the_short_tier_and_amount(memory, tier):
    with pytest.raises(InfeasibleBudget) as info:
        plan_policy(ModelSpec.from_name("opt-30b"), 512, 32, memory, "t4")
    assert isinstance(info.value, ValueError)
    assert set(info.value.shortfall) == {tier}
    message = str(info.value)
    assert f"{tier} " in message and "short by" in message and "GiB" in message


def test_max_block_size_and_flags_are_honoured():
    spec = ModelSpec.from_name("opt-6.7b")
    plan = plan_policy(spec, 128, 8, T4_BOX, "t4", compress_weight=True, compress_cache=True, max_block_size=24)
    assert plan.policy.block_size <= 24
    assert plan.policy.compress_weight and plan.policy.compress_cache
    assert not plan.policy.cpu_attention  # off with a compressed cache, as in the paper
    forced = plan_policy(spec, 128, 8, T4_BOX, "t4", cpu_attention=False, **SMALL_GRID)
    assert not forced.policy.cpu_attention


def test_cpu_only_machine_plans_in_fp32():
    spec = ModelSpec.from_name("smollm2-135m")
    budget = {"gpu": "600MiB", "cpu": "2GiB", "disk": "10GiB"}
    plan = plan_policy(spec, 64, 16, budget, "cpu", **SMALL_GRID)
    assert plan.estimate.dtype_bytes == 4
    assert fits(plan, budget)
    assert not plan.policy.cpu_attention


def test_a_cpu_plan_prefills_in_batches_to_decode_more_rows_at_once():
    """A CPU decodes a block's batches as one (runtime/scheduler.py), so where one batch's prefill
    working memory caps the block, several batches decode more rows per weight read."""
    spec = ModelSpec.from_name("olmoe-1b-7b")
    budget = {"gpu": "3GiB", "cpu": "3GiB", "disk": "60GiB"}
    plan = plan_policy(spec, 512, 32, budget, "cpu", dtype_bytes=2, max_block_size=128)
    single = plan_policy(spec, 512, 32, budget, "cpu", dtype_bytes=2, max_block_size=128, num_gpu_batches=(1,))
    assert plan.policy.num_gpu_batches > 1 and plan.policy.block_size > single.policy.block_size
    assert plan.throughput > single.throughput
    assert fits(plan, budget)


def test_bad_arguments_are_value_errors():
    spec = ModelSpec.from_name("opt-1.3b")
    with pytest.raises(ValueError, match="unknown memory tiers"):
        plan_policy(spec, 128, 8, {"gpu": "8GiB", "nvme": "1TB"})
    with pytest.raises(ValueError, match="margin"):
        plan_policy(spec, 128, 8, T4_BOX, margin=1.5)
    with pytest.raises(ValueError):
        plan_policy(spec, 128, 8, {"gpu": "lots"})


def _cli():
    from flexgen_eval.commands import plan

    parser = argparse.ArgumentParser()
    plan.register(parser.add_subparsers(dest="command"))
    return parser


def test_plan_command_prints_json(capsys):
    args = _cli().parse_args(["plan", "--model", "facebook/opt-1.3b", "--prompt-len", "128", "--gen-len", "8",
                              "--gpu-mem", "4GiB", "--cpu-mem", "32GiB", "--disk", "100GB", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(out["policy"]["weights"]) == pytest.approx(100)
    assert out["estimate"]["throughput_tokens_per_s"] > 0


def test_plan_command_plans_keys_per_channel_with_their_full_precision_group(capsys):
    base = ["plan", "--model", "facebook/opt-1.3b", "--prompt-len", "128", "--gen-len", "8", "--gpu-mem", "4GiB",
            "--cpu-mem", "32GiB", "--compress-cache", "--json"]
    plans = {}
    for keys in ("token", "channel"):
        args = _cli().parse_args(base + ["--cache-keys", keys])
        assert args.func(args) == 0
        plans[keys] = json.loads(capsys.readouterr().out)
    assert plans["channel"]["policy"]["cache_keys"] == "channel" and plans["token"]["policy"]["cache_keys"] == "token"


def test_plan_command_reads_a_model_dir_and_profile_defaults(tmp_path, capsys):
    from flexgen_core.model.spec import BUILTIN_CONFIGS

    (tmp_path / "config.json").write_text(json.dumps(BUILTIN_CONFIGS["opt-125m"]))
    args = _cli().parse_args(["plan", "--model", str(tmp_path), "--prompt-len", "64", "--gen-len", "8"])
    assert args.func(args) == 0  # gpu/cpu/disk from the t4 preset
    assert "token/s" in capsys.readouterr().out
    args = _cli().parse_args(["plan", "--model", "opt-125m", "--hardware", "cpu", "--gpu-mem", "1GiB"])
    with pytest.raises(ValueError, match="--cpu-mem"):
        args.func(args)
