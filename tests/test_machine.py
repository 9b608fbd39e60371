"""Budgets and the hardware profile read from the machine when the user names none."""
import json

import pytest

from flexgen_core import LLM, SamplingParams
from flexgen_core.planning import machine
from flexgen_core.planning.hardware import PRESETS
from flexgen_core.planning.planner import InfeasibleBudget

GiB = 1 << 30


@pytest.fixture
def readings(monkeypatch):
    """Free memory as a test says it is: RAM available, CUDA (free, total), disk free."""
    state = {"ram": 64 * GiB, "cuda": (40 * GiB, 80 * GiB), "disk": 500 * GiB}
    monkeypatch.setattr(machine, "available_ram_bytes", lambda: state["ram"])
    monkeypatch.setattr(machine, "cuda_free_bytes", lambda device: state["cuda"])
    monkeypatch.setattr(machine, "free_disk_bytes", lambda path: state["disk"])
    return state


def test_every_tier_is_detected_when_none_is_named(readings):
    cuda = machine.resolve_budgets(None, "cuda", None)
    assert cuda.bytes["gpu"] == 40 * GiB - machine.DEVICE_RESERVE
    assert cuda.bytes["cpu"] == 64 * GiB - int(0.1 * 64 * GiB)
    assert cuda.bytes["disk"] == 500 * GiB - int(0.05 * 500 * GiB)
    assert all(src.startswith("detected") for src in cuda.sources.values())
    # on a CPU device the two memory tiers are one RAM: split, never counted twice
    cpu = machine.resolve_budgets({}, "cpu", None)
    assert cpu.bytes["gpu"] + cpu.bytes["cpu"] == cuda.bytes["cpu"]
    assert cpu.bytes["gpu"] > cpu.bytes["cpu"] > 0
    assert "compute device is the CPU" in cpu.sources["gpu"]


def test_a_named_budget_wins_and_an_omitted_tier_is_detected_never_zero(readings):
    budgets = machine.resolve_budgets({"gpu": "300MB"}, "cpu", None)
    assert budgets.bytes["gpu"] == 300 * 10**6 and budgets.sources["gpu"] == "named"
    assert budgets.bytes["cpu"] > 0 and budgets.bytes["disk"] > 0
    assert budgets.sources["cpu"].startswith("detected") and budgets.sources["disk"].startswith("detected")
    assert not budgets.warnings
    line = budgets.describe()
    assert "gpu 286 MiB (named)" in line and "disk" in line and "detected" in line


def test_a_named_budget_larger_than_the_machine_gets_a_warning(readings, caplog):
    budgets = machine.resolve_budgets({"disk": "2TB"}, "cpu", None)
    assert budgets.bytes["disk"] == 2 * 10**12  # still used as named
    assert len(budgets.warnings) == 1 and "disk budget" in budgets.warnings[0]
    assert "disk budget" in caplog.text


def test_an_unknown_tier_is_refused(readings):
    with pytest.raises(ValueError, match="unknown memory tiers.*'ssd'"):
        machine.resolve_budgets({"ssd": "1TB"}, "cpu", None)


def test_a_model_loaded_without_a_policy_or_budgets_is_planned_within_the_detected_ones(readings, tiny_llama_dir,
                                                                                    tmp_path):
    readings["ram"] = 4 * GiB
    with LLM.from_pretrained(tiny_llama_dir, hardware="cpu", offload_dir=str(tmp_path)) as llm:
        assert llm.plan is not None and llm.replan is not None
        assert llm.budgets.bytes == llm.replan["memory"]
        assert all(src.startswith("detected") for src in llm.budgets.sources.values())
        out = llm.generate([[5, 6, 7, 8]], SamplingParams(max_new_tokens=3, ignore_eos=True))
        assert len(out[0].outputs[0].token_ids) == 3


def test_a_budget_the_model_cannot_fit_names_the_short_tier_and_the_cheapest_fix(readings, tmp_path):
    # OPT-125m in fp32 is ~500 MB; the machine is said to have ~50 MB of RAM and ~10 MB of disk to spare
    readings["ram"] = machine.HOST_RESERVE_MIN + 50 * 10**6
    readings["disk"] = machine.DISK_RESERVE_MIN + 10 * 10**6
    with pytest.raises(InfeasibleBudget) as err:
        LLM.from_pretrained("opt-125m", dummy_weights=True, hardware="cpu", offload_dir=str(tmp_path))
    message = str(err.value)
    assert "disk space is short by" in message
    assert "The cheapest fix: " in message and "a disk budget of at least" in message
    assert "(detected:" in message  # where the budgets came from


def test_the_measured_profile_of_a_cpu_machine_is_kept_and_reused(monkeypatch, tmp_path, caplog):
    calls = []

    def measure(offload_dir, device, name="measured"):
        calls.append(device)
        return PRESETS["cpu"].with_(name=name, gemm_flops_prefill=123e9)

    monkeypatch.setattr(machine, "measure_rates", measure)
    first = machine.default_hardware("cpu", cache_dir=str(tmp_path))
    again = machine.default_hardware("cpu", cache_dir=str(tmp_path))
    assert calls == ["cpu"] and first == again and again.gemm_flops_prefill == 123e9
    [kept] = (tmp_path / "hardware").iterdir()
    assert machine.machine_key() in kept.name
    kept.write_text("{not json")
    assert machine.default_hardware("cpu", cache_dir=str(tmp_path)) == first
    assert calls == ["cpu", "cpu"] and "measuring again" in caplog.text
    assert json.loads(kept.read_text())["gemm_flops_prefill"] == 123e9


def test_a_cuda_device_plans_with_the_closest_preset_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "measure_rates", lambda *a, **k: pytest.fail("measured a GPU at load"))
    monkeypatch.setattr(machine, "guess_preset", lambda device: PRESETS["a100-80g"])
    assert machine.default_hardware("cuda", cache_dir=str(tmp_path)) is PRESETS["a100-80g"]


def test_two_request_mixes_of_other_lengths_get_their_own_plans(readings, tiny_opt_dir, tmp_path):
    """Only the device budget is named (2 MiB, so the cache competes with the weights there); the
    rest is the machine's. Short prompts and long ones are planned apart, with the same outputs as
    a fixed policy."""
    with LLM.from_pretrained(tiny_opt_dir, memory={"gpu": "2MiB"}, hardware="cpu", offload_dir=str(tmp_path)) as llm:
        short, long = [[5 + i] * 10 for i in range(6)], [[40 + i] * 100 for i in range(3)]
        llm.generate(short, SamplingParams(max_new_tokens=4, ignore_eos=True))
        llm.generate(long, SamplingParams(max_new_tokens=20, ignore_eos=True))
        plans = {key: plan.policy for key, plan in llm.bucket_plans.items()}
        assert set(plans) == {(64, 4), (128, 20)}
        assert plans[64, 4] != plans[128, 20]
        assert plans[64, 4].block_size > plans[128, 20].block_size  # longer rows: more cache per row
        assert all(p.weights == llm.policy.weights for p in plans.values())
