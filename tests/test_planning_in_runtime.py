"""The planner inside the runtime: per-bucket plans, and memory the cost model and the runtime agree on."""
import pytest

from flexgen_core import LLM, ModelSpec, Policy, SamplingParams
from flexgen_core.planning.cost_model import estimate
from flexgen_core.planning.hardware import load_profile
from flexgen_core.planning.planner import plan_policy

PROMPT, NEW = 24, 4


def test_planning_with_fixed_weights_keeps_them_exactly():
    spec = ModelSpec.from_name("opt-30b")
    budget = {"gpu": "16GiB", "cpu": "200GiB", "disk": "1.5TB"}
    for weights in [(12.34, 87.66, 0.0), (0.0, 50.0, 50.0)]:
        plan = plan_policy(spec, 512, 32, budget, "t4", weights=weights)
        assert plan.policy.weights == weights
        assert all(plan.peak_memory[t] <= plan.usable[t] * 1.0001 for t in plan.usable)
    # a scoring bucket (one step) keeps no cache, so its blocks can be larger than a generation bucket's
    gen = plan_policy(spec, 512, 32, budget, "t4", weights=(0.0, 100.0, 0.0))
    score = plan_policy(spec, 512, 1, budget, "t4", weights=(0.0, 100.0, 0.0))
    assert score.policy.block_size > gen.policy.block_size


def test_each_bucket_of_lengths_gets_its_own_plan_with_the_same_outputs(tiny_opt_dir, tmp_path):
    budget = {"gpu": "2MiB", "cpu": "2MiB", "disk": "1GiB"}  # forces streaming for the tiny model
    prompts = [[5 + i] * 10 for i in range(6)] + [[40 + i] * 100 for i in range(3)]
    params = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
    with LLM.from_pretrained(tiny_opt_dir, memory=budget, hardware="cpu", workload=(PROMPT, NEW),
                             offload_dir=str(tmp_path / "a")) as planned:
        got = planned.generate(prompts, params)
        scores = planned.score([(p[:3], p[3:]) for p in prompts])
        assert {(64, NEW), (128, NEW), (64, 1), (128, 1)} <= set(planned.bucket_plans)
        assert all(plan.policy.weights == planned.policy.weights for plan in planned.bucket_plans.values())
    with LLM.from_pretrained(tiny_opt_dir, policy=Policy(gpu_batch_size=3),
                             offload_dir=str(tmp_path / "b")) as fixed:
        ref = fixed.generate(prompts, params)
        ref_scores = fixed.score([(p[:3], p[3:]) for p in prompts])
        assert fixed.bucket_plans == {}
    for g, r in zip(got, ref):
        assert g.outputs[0].token_ids == r.outputs[0].token_ids
        assert g.outputs[0].logprobs == pytest.approx(r.outputs[0].logprobs, abs=1e-5)
    for s, r in zip(scores, ref_scores):
        assert s.logprobs == pytest.approx(r.logprobs, abs=1e-5)



def test_a_planned_model_scores_choices_that_fill_the_whole_context(tiny_opt_dir):
    # a context with its choice is a row of all 256 tokens (the last target is no input), scored with none
    # generated after it; its bucket is planned as the longest prompt with room for one step (it once asked 257)
    group = ([5] * 201, [[6] * 56, [7] * 56])  # 257 tokens: the last one is only a target
    with LLM.from_pretrained(tiny_opt_dir, memory={"cpu": "1GiB"}, hardware="cpu") as planned:
        got = planned.score_choices([group])[0]
    with LLM.from_pretrained(tiny_opt_dir, policy=Policy(gpu_batch_size=1)) as fixed:
        want = fixed.score_choices([group])[0]
    for g, w in zip(got, want, strict=True):
        assert len(g.logprobs) == 56 and g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(weights=(0, 0, 100)),
    dict(weights=(0, 100, 0)),
    dict(weights=(50, 0, 50), cache=(0, 0, 100)),
    dict(weights=(20, 30, 50), cache=(20, 30, 50), activations=(20, 30, 50)),
])
def test_predicted_peak_memory_covers_the_runtimes_and_stays_close(kw, tmp_path):
    """On the CPU the device and CPU tiers are one RAM, and disk reads land straight in the compute
    buffers: the cost model must count what the runtime allocates, streamed layer buffers included."""
    policy = Policy(gpu_batch_size=4, **kw)
    spec = ModelSpec.from_name("opt-125m")
    est = estimate(spec, policy, PROMPT, NEW, load_profile("cpu"), dtype_bytes=4)
    with LLM.from_pretrained("opt-125m", policy=policy, dummy_weights=True, offload_dir=str(tmp_path)) as llm:
        loaded = llm.memory_stats()["resident"]
        llm.generate([[7] * PROMPT] * 4, SamplingParams(max_new_tokens=NEW, ignore_eos=True))
        stats = llm.memory_stats()
    for tier in ("gpu", "cpu", "disk"):
        measured, predicted = stats["peak"][tier], est.peak_memory[tier]
        assert measured <= predicted <= 1.3 * measured + (1 << 20), (tier, measured, predicted)
    assert stats["resident"] == loaded  # streamed layers' buffers, cache and activations were released
