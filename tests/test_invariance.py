"""The same outputs under every placement policy and block shape."""
import pytest

from flexgen_core import LLM, Policy, SamplingParams

PROMPTS = [[5, 17, 33, 40, 41, 42], [7, 8, 9], [100, 101, 102, 103, 104, 105, 106, 107, 108],
           [250, 251], [11, 12, 13, 14], [60, 61, 62, 63, 64, 65, 66], [3, 4], [90, 91, 92, 93, 94]]
MIX = (30, 50, 20)
POLICIES = {
    "all-device": Policy(),
    "all-cpu": Policy(weights=(0, 100, 0), cache=(0, 100, 0), activations=(0, 100, 0)),
    "all-disk": Policy(weights=(0, 0, 100), cache=(0, 0, 100), activations=(0, 0, 100)),
    "mix": Policy(weights=MIX, cache=MIX, activations=MIX),
    "mix-cpu-attention": Policy(weights=MIX, cache=MIX, activations=MIX, cpu_attention=True),
    "disk-cpu-attention": Policy(weights=(0, 0, 100), cache=(0, 0, 100), cpu_attention=True),
    # part of each off-device tier's rows attended on the CPU, the rest brought to the device
    "mix-cpu-attention-share": Policy(weights=MIX, cache=MIX, activations=MIX, cpu_attention=0.4),
    "block-4x2-cpu-attention-share": Policy(weights=MIX, cache=(0, 60, 40), gpu_batch_size=4, num_gpu_batches=2,
                                            cpu_attention=0.5),
    "mix-no-overlap": Policy(weights=MIX, cache=MIX, activations=MIX, overlap=False),
    "block-1x8": Policy(weights=MIX, cache=MIX, gpu_batch_size=1, num_gpu_batches=8),
    "block-4x2": Policy(weights=MIX, cache=MIX, gpu_batch_size=4, num_gpu_batches=2),
    "block-8x1": Policy(weights=MIX, cache=MIX, gpu_batch_size=8, num_gpu_batches=1),
    "block-4x2-no-overlap": Policy(weights=MIX, cache=MIX, gpu_batch_size=4, num_gpu_batches=2, overlap=False),
}
PARAMS = SamplingParams(max_new_tokens=12, ignore_eos=True)


def run(path, policy, tmp_path):
    with LLM.from_pretrained(path, policy=policy, offload_dir=str(tmp_path)) as llm:
        gens = llm.generate(PROMPTS, PARAMS)
        scores = llm.score([(p[:1], p[1:]) for p in PROMPTS])
        return gens, scores, llm.memory_stats()


@pytest.fixture(scope="module", params=["tiny_llama_tied_dir", "tiny_llama_dir", "tiny_opt_dir"])
def model(request, tmp_path_factory):
    path = request.getfixturevalue(request.param)
    return path, run(path, Policy(), tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize("name", list(POLICIES))
def test_outputs_identical_across_policies(model, name, tmp_path):
    path, (base_gens, base_scores, _) = model
    gens, scores, stats = run(path, POLICIES[name], tmp_path)
    for b, g in zip(base_gens, gens):
        assert g.outputs[0].token_ids == b.outputs[0].token_ids
        assert g.outputs[0].logprobs == pytest.approx(b.outputs[0].logprobs, abs=1e-5)
    for b, s in zip(base_scores, scores):
        assert s.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    policy = POLICIES[name]
    if policy.weights[2] > 0 or policy.cache[2] > 0:
        # the disk tier was really read during the run, not just written
        assert stats["read"]["disk"] > 0
    if policy.weights[2] == 100:
        assert stats["resident"]["disk"] > 0 and stats["read"]["disk"] >= stats["resident"]["disk"]


def test_disk_weight_files_are_reused(tiny_llama_dir, tmp_path):
    policy = Policy(weights=(0, 0, 100))
    with LLM.from_pretrained(tiny_llama_dir, policy=policy, offload_dir=str(tmp_path)) as llm:
        first = llm.generate([[5, 6, 7]], PARAMS)[0].outputs[0].token_ids
    files = sorted(p for p in tmp_path.rglob("*.bin"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert files, "disk-tier weights were not written under offload_dir"
    with LLM.from_pretrained(tiny_llama_dir, policy=policy, offload_dir=str(tmp_path)) as llm:
        assert llm.generate([[5, 6, 7]], PARAMS)[0].outputs[0].token_ids == first
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


@pytest.mark.parametrize("name", ["block-1x8", "block-4x2", "block-4x2-cpu-attention-share", "block-4x2-no-overlap"])
def test_decode_batch_by_batch_gives_what_the_merged_decode_gives(model, name, tmp_path):
    """On a CPU a decode step runs a layer once over all of a block's batches; the GPU's schedule (one call
    per batch) run here gives the same tokens and log-probs."""
    path, (base_gens, base_scores, _) = model
    with LLM.from_pretrained(path, policy=POLICIES[name], offload_dir=str(tmp_path)) as llm:
        assert llm.scheduler.merge_decode
        llm.scheduler.merge_decode = False
        gens = llm.generate(PROMPTS, PARAMS)
    for b, g in zip(base_gens, gens):
        assert g.outputs[0].token_ids == b.outputs[0].token_ids
        assert g.outputs[0].logprobs == pytest.approx(b.outputs[0].logprobs, abs=1e-5)
