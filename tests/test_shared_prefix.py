"""A block's common prompt prefix is computed once, with the same outputs as per row."""
import pytest

from flexgen_core import LLM, Policy, SamplingParams

SHOTS = list(range(20, 60))  # 40 tokens every prompt starts with, like HELM's in-context examples
PROMPTS = [SHOTS + [5, 6, 7], SHOTS + [9], SHOTS + [100, 101, 102, 103, 104], SHOTS + [7, 7], SHOTS[:30] + [3]]
MIX = (30, 50, 20)
POLICIES = {
    "resident": Policy(),
    "mix, 2x2 blocks": Policy(weights=MIX, cache=MIX, activations=MIX, gpu_batch_size=2, num_gpu_batches=2),
    "cache on disk, CPU attention": Policy(cache=(0, 0, 100), cpu_attention=True),
    "no overlap": Policy(weights=MIX, cache=MIX, overlap=False),
}
PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=True)


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_opt_dir"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_shared_prefix_gives_the_same_outputs(model, name, request, tmp_path, prefix_passes):
    path = request.getfixturevalue(model)
    with LLM.from_pretrained(path, policy=POLICIES[name], offload_dir=str(tmp_path)) as llm:
        llm.share_prefixes = False
        per_row = llm.generate(PROMPTS, PARAMS)
        assert not prefix_passes
        llm.share_prefixes = True
        shared = llm.generate(PROMPTS, PARAMS)
    assert prefix_passes and set(prefix_passes) <= {30, len(SHOTS)}  # each block computed its common prefix once
    for a, b in zip(per_row, shared):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].logprobs == pytest.approx(b.outputs[0].logprobs, abs=1e-4)


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_opt_dir"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_scoring_shares_block_prefixes(model, name, request, tmp_path, prefix_passes):
    """lm-eval's few-shot multiple choice: questions after the same examples, several answers each."""
    path = request.getfixturevalue(model)
    other = list(range(200, 230))  # a second "subject": its own examples
    contexts = [SHOTS + [5, 6, 7], other + [8, 9], SHOTS + [9], other + [3], SHOTS + [100, 101, 102, 103, 104],
                SHOTS[:30] + [3], [4, 5, 6]] + [SHOTS + [70 + i] * (i % 3 + 1) for i in range(8)] + \
               [other + [80 + i] for i in range(8)]
    groups = [(ctx, [[11], [12, 13], [14]]) for ctx in contexts]
    pairs = [(ctx, [60, 61]) for ctx in contexts]
    with LLM.from_pretrained(path, policy=POLICIES[name], offload_dir=str(tmp_path)) as llm:
        llm.share_prefixes = False
        alone_choices, alone_pairs = llm.score_choices(groups), llm.score(pairs)
        assert not prefix_passes
        llm.share_prefixes = True
        shared_choices, shared_pairs = llm.score_choices(groups), llm.score(pairs)
    assert prefix_passes and set(prefix_passes) <= {30, len(SHOTS), len(other)} and len(other) in prefix_passes
    for a, b in zip(sum(alone_choices, []) + alone_pairs, sum(shared_choices, []) + shared_pairs):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert a.is_greedy == b.is_greedy


def test_blocks_keep_alike_rows_together(tiny_llama_dir, tmp_path):
    from flexgen_core.runtime.prefix_sharing import prefix_blocks

    def alike_order(rows, min_shared, block, lengths=None):  # the blocks' rows, in order
        return [i for blk in prefix_blocks(rows, min_shared, lambda _: block, lengths) for i in blk]

    a, b = list(range(100, 120)), list(range(200, 220))
    rows = [a + [1], b + [1, 2, 3], a + [1, 2], [7] * 30, b + [4], a + [5, 6, 7, 8]]
    assert alike_order(rows, 16, 3) == [5, 2, 0, 3, 1, 4]  # a's group is one chunk; b's is too small: longest first
    assert alike_order(rows, None, 2) == [3, 5, 1, 2, 0, 4]  # no sharing: longest first
    assert alike_order(rows, None, 2, [1, 2, 3, 4, 5, 6]) == [5, 4, 3, 2, 1, 0]  # by what each row costs
    # in chunks of 2: a's group gives one chunk, b's another; a's third row joins the rest by length
    assert alike_order(rows, 16, 2) == [5, 2, 1, 4, 3, 0]
    assert alike_order(rows, 16, 4) == [3, 5, 1, 2, 0, 4]  # no group fills a chunk: longest first
    with LLM.from_pretrained(tiny_llama_dir, policy=Policy(gpu_batch_size=2), offload_dir=str(tmp_path)) as llm:
        # a's and b's groups fill blocks; a's last row joins the others: as many blocks as without sharing
        assert [block for block, _ in llm._blocks(rows, 1)] == [[5, 2], [1, 4], [3, 0]]
        llm.share_prefixes = False
        assert [block for block, _ in llm._blocks(rows, 1)] == [[3, 5], [1, 2], [0, 4]]


def test_no_sharing_when_a_prompt_would_be_left_empty(tiny_llama_dir, tmp_path):
    with LLM.from_pretrained(tiny_llama_dir, policy=Policy(), offload_dir=str(tmp_path)) as llm:
        assert llm._shared_prefix([SHOTS, SHOTS + [1]], Policy()) == len(SHOTS) - 1
        assert llm._shared_prefix([SHOTS[:10] + [1], SHOTS[:10] + [2]], Policy()) == 0  # too short to pay
        assert llm._shared_prefix([SHOTS + [1], [3, 4, 5]], Policy()) == 0
        assert llm._shared_prefix([SHOTS + [1], SHOTS + [2]], Policy(compress_cache=True)) == 0
        assert llm._shared_prefix([SHOTS + [1], SHOTS + [2]], Policy(), limit=20) == 20  # a target at position 20


def test_prompt_logprobs_of_alike_prompts_match_scoring_each_alone(tiny_llama_dir, tiny_opt_dir, tmp_path):
    """HELM's separate multiple-choice method: one question, each answer in its own request."""
    question = list(range(30, 70))
    prompts = [question + [5, 6], question + [9], question + [100, 101, 102], [7, 8, 9, 10], [4],
               question[:20] + [11, 12]]
    for path in (tiny_llama_dir, tiny_opt_dir):
        with LLM.from_pretrained(path, policy=Policy(gpu_batch_size=2, num_gpu_batches=2),
                                 offload_dir=str(tmp_path)) as llm:
            llm.share_prefixes = False
            alone = llm.prompt_logprobs(prompts)
            llm.share_prefixes = True
            packed = llm.prompt_logprobs(prompts)
        for a, b, p in zip(alone, packed, prompts):
            assert len(b) == len(p) and b[0] is None
            assert b[1:] == pytest.approx(a[1:], abs=1e-4)


def test_prefix_groups():
    from flexgen_core.runtime.prefix_sharing import prefix_groups as _prefix_groups

    q = list(range(100, 120))
    groups = _prefix_groups([q + [1], [5, 6], q + [2, 3], q, q[:10] + [9]], 16)
    assert sorted((sorted(m), n) for m, n in groups) == [([0, 2, 3], 19), ([1], 0), ([4], 0)]
    assert _prefix_groups([q, q], None) == [([0], 0), ([1], 0)]
    # a header common to all (a chat template) does not merge questions whose answers share more
    header = list(range(200, 220))
    a, b = header + list(range(1, 30)), header + list(range(40, 70))
    prompts = [a + [1], a + [2], b + [3], b + [4], a + [5]]
    assert sorted((sorted(m), n) for m, n in _prefix_groups(prompts, 16)) == [([0, 1, 4], 49), ([2, 3], 50)]


def test_scoring_batches_end_before_padding_grows():
    from flexgen_core.runtime.jobs import _row_groups

    rows = [[0] * 100, [0] * 95, [0] * 40, [0] * 38, [0] * 10]
    assert _row_groups(rows, 8, 1.25) == [[0, 1], [2, 3], [4]]
    assert _row_groups(rows, 8, None) == [[0, 1, 2, 3, 4]]
    assert _row_groups(rows, 2, None) == [[0, 1], [2, 3], [4]]
