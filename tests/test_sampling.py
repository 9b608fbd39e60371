"""Sampling is reproducible with a seed and does not depend on block shape or order."""
from flexgen_core import LLM, Policy, SamplingParams

PROMPTS = [[5, 17, 33], [7, 8, 9, 10, 11], [100, 101]]


def test_seeded_sampling_is_reproducible_and_shape_independent(tiny_llama_dir):
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=50, n=3, seed=7, ignore_eos=True)
    results = []
    for policy in (Policy(gpu_batch_size=1, num_gpu_batches=1), Policy(gpu_batch_size=4, num_gpu_batches=2)):
        with LLM.from_pretrained(tiny_llama_dir, policy=policy) as llm:
            results.append([[c.token_ids for c in o.outputs] for o in llm.generate(PROMPTS, params)])
    assert results[0] == results[1]
    completions = results[0][0]
    assert len(completions) == 3 and len({tuple(c) for c in completions}) > 1


def test_different_seeds_differ_and_top_k_1_is_greedy(tiny_llama_dir):
    with LLM.from_pretrained(tiny_llama_dir) as llm:
        a = llm.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=1, ignore_eos=True))
        b = llm.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=2, ignore_eos=True))
        assert [o.outputs[0].token_ids for o in a] != [o.outputs[0].token_ids for o in b]
        greedy = llm.generate(PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True))
        top1 = llm.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.7, top_k=1, seed=3, ignore_eos=True))
        assert [o.outputs[0].token_ids for o in greedy] == [o.outputs[0].token_ids for o in top1]


def test_greedy_n_copies_and_top_logprobs(tiny_llama_dir):
    with LLM.from_pretrained(tiny_llama_dir) as llm:
        out = llm.generate([PROMPTS[0]], SamplingParams(max_new_tokens=5, n=2, top_logprobs=3, ignore_eos=True))[0]
        assert len(out.outputs) == 2 and out.outputs[0].token_ids == out.outputs[1].token_ids
        first = out.outputs[0]
        assert len(first.top_logprobs) == 5 and all(len(t) == 3 for t in first.top_logprobs)
        for token, lp, top in zip(first.token_ids, first.logprobs, first.top_logprobs):
            assert token in top and abs(top[token] - lp) < 1e-6 and lp == max(top.values())
