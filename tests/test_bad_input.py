"""Bad input gets one clear error before any work starts."""
import json
import os
import shutil

import pytest

from flexgen_core import LLM, ModelSpec, Policy, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    with LLM.from_pretrained(tiny_llama_dir) as model:
        yield model


def test_empty_prompt(llm):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        llm.generate([[1, 2], []])


def test_prompt_beyond_context(llm):
    with pytest.raises(ValueError, match="exceeds the model context of 256"):
        llm.generate([[5] * 250], SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="exceeds the model context"):
        llm.prompt_logprobs([[5] * 300])


def test_token_outside_vocabulary(llm):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[5, 100000]])


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_score_needs_context_and_continuation(llm):
    with pytest.raises(ValueError, match="non-empty context"):
        llm.score([([], [1, 2])])


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights=(50, 40, 0)), "summing to 100"),
    (dict(cache=(-10, 110, 0)), "non-negative"),
    (dict(gpu_batch_size=0), "positive integer"),
    (dict(compression_bits=3), "4 or 8"),
])
def test_bad_policy(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Policy(**kwargs)


def test_policy_that_does_not_fit_memory(tiny_llama_dir):
    with pytest.raises(ValueError, match=r"weights need .* on gpu, budget is .*short by"):
        LLM.from_pretrained(tiny_llama_dir, policy=Policy(), memory={"gpu": "10KiB", "cpu": "1GiB"})


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(ValueError, match="unsupported architecture: model_type='mamba'"):
        ModelSpec.from_dir(str(tmp_path))


def test_missing_weights(tiny_llama_dir, tmp_path):
    shutil.copy(os.path.join(tiny_llama_dir, "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        LLM.from_pretrained(str(tmp_path))


def test_corrupt_weights(tiny_llama_dir, tmp_path):
    for name in os.listdir(tiny_llama_dir):
        shutil.copy(os.path.join(tiny_llama_dir, name), tmp_path)
    st = tmp_path / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # truncated download
    with pytest.raises(ValueError, match="corrupt|cannot read"):
        LLM.from_pretrained(str(tmp_path))


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="not a directory"):
        LLM.from_pretrained("no-such-org/no-such-model-xyz")


def test_memory_budget_without_policy_plans_one(tiny_llama_dir, tmp_path):
    budget = {"gpu": "400KiB", "cpu": "400KiB", "disk": "10MiB"}
    with LLM.from_pretrained(tiny_llama_dir, memory=budget, offload_dir=str(tmp_path), workload=(16, 4)) as llm:
        assert llm.plan is not None and llm.policy == llm.plan.policy
        assert llm.policy.weights[2] > 0  # the weights (~600 KiB fp32) do not fit in memory
        out = llm.generate([[5, 6, 7]], SamplingParams(max_new_tokens=4, ignore_eos=True))
        assert len(out[0].outputs[0].token_ids) == 4
        resident = llm.memory_stats()["peak"]
        assert resident["gpu"] <= 400 * 1024 and resident["cpu"] <= 400 * 1024


def test_impossible_budget_names_the_tier():
    from flexgen_core.planning.planner import InfeasibleBudget

    with pytest.raises(InfeasibleBudget, match="disk"):
        LLM.from_pretrained("opt-125m", dummy_weights=True, memory={"gpu": "1MiB", "cpu": "1MiB", "disk": "1MiB"})


def test_cpu_attention_as_typed_is_a_share_or_one_clear_error():
    from flexgen_core.planning.policy import parse_cpu_attention

    for text, share in (("on", 1.0), ("True", 1.0), ("off", 0.0), ("no", 0.0), ("0.25", 0.25), (1, 1.0), (False, 0.0)):
        assert parse_cpu_attention(text) == share
    for bad in ("1.5", "-0.1", "sometimes", None):
        with pytest.raises(ValueError, match="cpu_attention must be true, false or a share in"):
            parse_cpu_attention(bad)


@pytest.mark.parametrize("call, message", [
    (lambda llm: llm.score([([5, 6], [49153])]), r"pair 0 has token ids outside the vocabulary .*\[49153\]"),
    (lambda llm: llm.score_choices([([5, 6], [[7], [300, 49153]])]), r"group 0 has token ids outside"),
    (lambda llm: llm.prompt_logprobs([[5, 6, 49153]]), r"prompt 0 has token ids outside"),
    (lambda llm: llm.generate([[5, 3.7]]), r"prompt 0 has token ids that are not integers: \[3.7\]"),
    (lambda llm: llm.score([([5, 6.0], [7])]), r"not integers"),
    (lambda llm: llm.generate([[5, 6]], SamplingParams(top_logprobs=10**6)), r"top_logprobs is 1000000, more than"),
    (lambda llm: llm.generate([[5, 6]], SamplingParams(stop_token_ids=[10**6])), r"stop_token_ids has token ids out"),
])
def test_ids_and_options_that_would_reach_torch_are_refused_first(llm, call, message):
    stats = llm.memory_stats()
    with pytest.raises(ValueError, match=message):
        call(llm)
    assert llm.memory_stats()["read"] == stats["read"]  # refused before any compute


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.7"])
def test_temperature_must_be_a_finite_number(value):
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        SamplingParams(temperature=value)


@pytest.mark.parametrize("field", ["top_k", "top_logprobs", "seed"])
def test_integer_sampling_options_must_be_integers(field):
    with pytest.raises(ValueError, match=f"{field} must be an integer"):
        SamplingParams(**{field: 2.5})


def test_a_config_without_a_needed_field_names_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 100,
                                                      "num_hidden_layers": 2, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match=r"the llama config of '.*' lacks 'hidden_size', which it needs"):
        ModelSpec.from_dir(str(tmp_path))
