"""Our log-probs and greedy tokens against HF transformers, fp32 on CPU."""
import hf_reference
import pytest

from flexgen_core import LLM, Policy, SamplingParams

PROMPTS = [[5, 17, 33, 40, 41, 42], [7, 8, 9], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110], [250]]
MODELS = ["tiny_opt_dir", "tiny_opt_postln_dir", "tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir"]


@pytest.fixture(scope="module", params=MODELS)
def model_pair(request):
    path = request.getfixturevalue(request.param)
    llm = LLM.from_pretrained(path, policy=Policy(gpu_batch_size=2, num_gpu_batches=2))
    yield llm, hf_reference.load(path)
    llm.close()


def test_greedy_tokens_and_logprobs_match_hf(model_pair):
    llm, hf = model_pair
    outs = llm.generate(PROMPTS, SamplingParams(max_new_tokens=32, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ref_tokens, ref_lp = hf_reference.greedy(hf, prompt, 32)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens
        assert got.logprobs == pytest.approx(ref_lp, abs=1e-4)
        assert got.finish_reason == "length"


def test_score_and_prompt_logprobs_match_hf(model_pair):
    llm, hf = model_pair
    pairs = [(p[: max(1, len(p) // 2)], p[max(1, len(p) // 2):] or [3]) for p in PROMPTS]
    scores = llm.score(pairs)
    for (ctx, cont), s in zip(pairs, scores):
        ref = hf_reference.token_logprobs(hf, ctx + cont)[len(ctx) - 1:]
        assert s.logprobs == pytest.approx(ref, abs=1e-4)
        assert len(s.logprobs) == len(cont)
    echo = llm.prompt_logprobs(PROMPTS)
    for p, e in zip(PROMPTS, echo):
        assert e[0] is None and len(e) == len(p)
        assert e[1:] == pytest.approx(hf_reference.token_logprobs(hf, p), abs=1e-4)


def test_is_greedy_agrees_with_generation(model_pair):
    llm, _ = model_pair
    prompt = PROMPTS[0]
    gen = llm.generate([prompt], SamplingParams(max_new_tokens=4, ignore_eos=True))[0].outputs[0].token_ids
    assert llm.score([(prompt, gen)])[0].is_greedy
    other = [(gen[0] + 1) % llm.spec.vocab_size] + gen[1:]
    assert not llm.score([(prompt, other)])[0].is_greedy


def test_stop_strings_cut_text_and_stop_generation(tiny_llama_dir):
    with LLM.from_pretrained(tiny_llama_dir) as llm:
        tok = llm.tokenizer
        prompt = tok("The capital of")["input_ids"]
        free = llm.generate([prompt], SamplingParams(max_new_tokens=24, ignore_eos=True))[0].outputs[0]
        assert len(free.text) > 4
        stop = free.text[len(free.text) // 2: len(free.text) // 2 + 2]  # a string that really occurs
        cut = llm.generate([prompt], SamplingParams(max_new_tokens=24, stop=[stop], ignore_eos=True))[0].outputs[0]
        assert cut.finish_reason == "stop"
        assert cut.text == free.text[: free.text.find(stop)]
        assert stop not in cut.text
        assert len(cut.token_ids) < 24 and cut.token_ids == free.token_ids[: len(cut.token_ids)]


def test_eos_stops_a_row(tiny_llama_dir):
    with LLM.from_pretrained(tiny_llama_dir) as llm:
        prompt = [5, 6, 7]
        free = llm.generate([prompt], SamplingParams(max_new_tokens=8, ignore_eos=True))[0].outputs[0]
        stop_at = free.token_ids[2]
        out = llm.generate([prompt], SamplingParams(max_new_tokens=8, stop_token_ids=[stop_at], ignore_eos=True))
        got = out[0].outputs[0]
        assert got.finish_reason == "stop"
        assert got.token_ids == free.token_ids[: free.token_ids.index(stop_at) + 1]


def test_score_choices_shares_the_context_and_matches_score(model_pair):
    llm, _ = model_pair
    groups = [([5, 17, 33, 40], [[41], [42, 43, 44], [7, 8], [9, 10, 11, 12]]),
              ([100, 101], [[102, 103], [104]]),
              ([250], [[3, 4, 5]])]
    shared = llm.score_choices(groups)
    for (context, choices), got in zip(groups, shared):
        alone = llm.score([(context, c) for c in choices])
        assert len(got) == len(choices)
        for a, g, c in zip(alone, got, choices):
            assert len(g.logprobs) == len(c)
            assert g.logprobs == pytest.approx(a.logprobs, abs=1e-5)
            assert g.is_greedy == a.is_greedy
