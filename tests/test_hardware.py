import argparse
import json
import os
from dataclasses import fields

import pytest
import torch

from flexgen_core.planning.hardware import PRESETS, GiB, HardwareProfile, load_profile
from flexgen_core.profiler import measure_profile


@pytest.mark.parametrize("name", ["t4", "a100-40g", "a100-80g", "h100", "rtx4090", "cpu"])
def test_presets_exist_state_a_source_and_are_positive(name):
    hw = load_profile(name)
    assert hw.name == name and len(hw.source) > 20
    for f in fields(hw):
        v = getattr(hw, f.name)
        # None: gemv_bw falls back to device_mem_bw, cpu_attn_bw to cpu_mem_bw
        if f.name.endswith(("_bw", "_flops")) and not (f.name in ("gemv_bw", "cpu_attn_bw") and v is None):
            assert v > 0, f.name
    assert hw.device == ("cpu" if name == "cpu" else "cuda")


def test_t4_preset_uses_the_authors_fitted_constants():
    t4 = load_profile("T4")  # case-insensitive
    assert t4.h2d_bw == pytest.approx(12.89 * GiB)
    assert t4.d2h_cache_bw == pytest.approx(0.97 * GiB)
    assert t4.disk_read_bw == pytest.approx(0.473 * GiB)
    assert t4.disk_write_cache_bw == pytest.approx(0.746 * GiB)
    assert t4.gemm_flops_prefill == pytest.approx(21.24e12)
    assert t4.gemm_flops_decode == pytest.approx(4.3e12)
    assert t4.cpu_attn_flops == pytest.approx(0.0123e12)
    assert "FlexGen" in t4.source


def test_profile_round_trips_through_json(tmp_path):
    path = tmp_path / "hw.json"
    PRESETS["a100-80g"].save(str(path))
    assert load_profile(str(path)) == PRESETS["a100-80g"]


def test_bad_profiles_are_rejected_clearly(tmp_path):
    data = PRESETS["t4"].to_dict()
    (tmp_path / "extra.json").write_text(json.dumps({**data, "warp_drive_bw": 1.0}))
    with pytest.raises(ValueError, match="warp_drive_bw"):
        load_profile(str(tmp_path / "extra.json"))
    del data["h2d_bw"]
    (tmp_path / "missing.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="h2d_bw"):
        load_profile(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="t4"):  # lists the presets
        load_profile("no-such-gpu")
    with pytest.raises(ValueError, match="positive"):
        PRESETS["t4"].with_(h2d_bw=0.0)


def test_measure_profile_on_cpu_is_complete_and_cleans_up(tmp_path):
    hw = measure_profile(str(tmp_path), "cpu", link_bytes=8 << 20, disk_bytes=8 << 20, min_time=0.01, name="here")
    assert hw.device == "cpu" and hw.name == "here"
    for f in fields(hw):
        v = getattr(hw, f.name)
        if f.name.endswith(("_bw", "_flops")) and f.name != "cpu_attn_bw":
            assert v > 0, f.name
    assert hw.disk_cache_op_s > 0 and hw.dequant_rate > 0
    # a CPU device has no separate CPU attention, and its layer calls are part of its measured rates
    assert hw.cpu_attn_bw is None and hw.layer_call_s == 0
    assert "O_DIRECT" in hw.source or "fadvise" in hw.source
    assert os.listdir(tmp_path) == []  # the scratch file is gone
    hw.save(str(tmp_path / "measured.json"))
    assert load_profile(str(tmp_path / "measured.json")) == hw


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_profile_on_cuda_adds_the_host_side_rates(tmp_path):
    hw = measure_profile(str(tmp_path), "cuda", link_bytes=8 << 20, disk_bytes=8 << 20, min_time=0.01)
    assert hw.device == "cuda" and hw.cpu_attn_bw > 0 and hw.layer_call_s > 0
    for f in fields(hw):
        v = getattr(hw, f.name)
        if f.name.endswith(("_bw", "_flops")):
            assert v > 0, f.name


def test_measure_profile_refuses_unknown_device(tmp_path):
    with pytest.raises(ValueError):
        measure_profile(str(tmp_path), "tpu")


def _cli(module):
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command"))
    return parser


def test_profile_command_writes_json(tmp_path, monkeypatch, capsys):
    from flexgen_eval.commands import profile

    calls = []

    def fake(offload_dir, device, name):
        calls.append((offload_dir, device))
        return PRESETS["cpu"].with_(name=name)

    monkeypatch.setattr(profile, "measure_profile", fake)
    out = tmp_path / "p.json"
    args = _cli(profile).parse_args(["profile", "--out", str(out), "--offload-dir", str(tmp_path), "--device", "cpu"])
    assert args.func(args) == 0
    assert calls == [(str(tmp_path), "cpu")]
    assert load_profile(str(out)).name == "measured"
    args = _cli(profile).parse_args(["profile", "--show", "t4"])
    assert args.func(args) == 0
    assert "12.89 GiB/s" in capsys.readouterr().out


def test_profile_memory_defaults_are_parsed():
    assert PRESETS["t4"].memory["gpu"] == 15 * GiB
    hw = HardwareProfile.from_dict({**PRESETS["cpu"].to_dict(), "memory": {"gpu": "2GiB", "cpu": "8GB"}})
    assert hw.memory == {"gpu": 2 * GiB, "cpu": 8 * 10**9}


def test_gpu_only_measurements_run_the_runtimes_own_code(tmp_path):
    """What a CUDA profile adds (timed here on the CPU): the CPU attention kernel's rate on
    half-precision cache rows, and the host time per layer call of a real decode."""
    import torch

    from flexgen_core.planning.measure import _cpu_attention_bw, _mean_time
    from flexgen_core.profiler import _layer_call_s

    timeit = lambda fn: _mean_time(fn, lambda: None, 0.01)  # noqa: E731
    assert _cpu_attention_bw(torch.float16, timeit, rows=16, length=32, d=16) > 0
    assert _layer_call_s("cpu", str(tmp_path), steps=2) > 0
