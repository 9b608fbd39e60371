"""Data parallelism on a local Ray instance (2 CPUs): two workers, each with its own copy of the
tiny model, give what one LLM gives for every call, in the caller's order; a request at fault fails
alone; a worker killed mid-chunk has its chunk computed by another; load errors are the loader's."""
import functools
import json
import os
from collections import Counter

import pytest

ray = pytest.importorskip("ray")

from flexgen_core import LLM, SamplingParams  # noqa: E402
from flexgen_eval.parallel import (
    DataParallelLLM,  # noqa: E402
    chunks,  # noqa: E402
)
from flexgen_eval.parallel.chunks import make_chunks  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-5
QUESTIONS = [f"Question: what is {i} plus {i % 3}? Answer:" for i in range(14)]
OTHERS = ["The capital of France is", "A B C D E F G H", "Once upon a time there was a small model",
          "the quick brown fox jumps over the lazy dog\nnew lines matter\n\n"]


@pytest.fixture(scope="module")
def local_ray():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunks, "MIN_CHUNK_REQUESTS", 1)  # the tests' small calls still spread over both workers
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny_llama_dir):
    llm = LLM.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu")
    yield llm
    llm.close()


@pytest.fixture
def pair(local_ray, tiny_llama_dir):
    """Two workers of one CPU each: the whole instance, so each test that needs it starts its own."""
    dp = DataParallelLLM(tiny_llama_dir, workers=2, dtype="float32", device="cpu")
    yield dp
    dp.close()


def _prompts(tokenizer):
    return [tokenizer.encode(t) for t in QUESTIONS + OTHERS]


class _Blocks(list):
    """on_block's reports: every request exactly once."""

    def __call__(self, finished):
        self.extend(i for i, _ in finished)


def test_chunks_cover_every_request_once_alike_together_costliest_first():
    few_shot = list(range(100, 120))  # 20 tokens, more than the runtime shares, then 1..6 tokens of each prompt's own
    keys = [few_shot + [7] * (1 + i) for i in range(6)] + [[8 + i % 2, 30 + i] + [5] * (38 + 20 * i) for i in range(6)]
    costs = [len(k) for k in keys]
    chunks = make_chunks(keys, costs, workers=2, per_worker=2, min_requests=1)
    assert sorted(i for c in chunks for i in c) == list(range(12))
    work = [sum(costs[i] for i in c) for c in chunks]
    assert work == sorted(work, reverse=True)
    assert any(set(range(6)) <= set(c) for c in chunks)  # the six alike prompts share one chunk
    # the rest by length: a chunk's own lengths do not interleave with another's
    spans = sorted((min(costs[i] for i in c), max(costs[i] for i in c)) for c in chunks if not set(c) & set(range(6)))
    assert all(hi < lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
    alike = [few_shot + [7] * (1 + i) for i in range(12)]  # one group more than a chunk's work: cut, not one worker's
    assert len(make_chunks(alike, [len(k) for k in alike], workers=2, per_worker=2, min_requests=1)) > 1
    assert len(make_chunks(keys, costs, workers=2, per_worker=2, max_requests=2, min_requests=1)) == 6
    # a small call is cut into fewer chunks, so that each fills a block
    assert len(make_chunks(keys, costs, workers=2, per_worker=4, min_requests=6)) == 2
    assert len(make_chunks(keys, costs, workers=2, per_worker=4, min_requests=16)) == 1
    assert make_chunks([], [], workers=2) == []


def test_every_call_gives_what_one_llm_gives(pair, single):
    assert pair.workers == 2 and pair.nodes == 1 and pair.threads == 1
    assert "2 data-parallel workers" in pair.describe_placement()
    # the node's memory is shared out between its two workers
    assert pair.budgets.bytes["cpu"] < 0.6 * single.budgets.bytes["cpu"]
    prompts = _prompts(single.tokenizer)

    blocks = _Blocks()
    groups = [(p, [[5, 6], [7]]) for p in prompts]
    got, want = pair.score_choices(groups, on_block=blocks), single.score_choices(groups)
    assert sorted(blocks) == list(range(len(groups)))
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert a.is_greedy == b.is_greedy and a.logprobs == pytest.approx(b.logprobs, abs=TOL)

    pairs = [(p[:-2], p[-2:]) for p in prompts]
    for a, b in zip(pair.score(pairs), single.score(pairs), strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)

    for a, b in zip(pair.prompt_logprobs(prompts), single.prompt_logprobs(prompts), strict=True):
        assert a[0] is None and a[1:] == pytest.approx(b[1:], abs=TOL)

    for params in (SamplingParams(max_new_tokens=6), SamplingParams(max_new_tokens=6, temperature=0.9, n=2, seed=4)):
        blocks = _Blocks()
        got = pair.generate(prompts, params, on_block=blocks)
        want = single.generate(prompts, params)
        assert sorted(blocks) == list(range(len(prompts)))
        assert [[c.token_ids for c in r.outputs] for r in got] == [[c.token_ids for c in r.outputs] for r in want]
    assert pair.totals["generate"]["rows"] == 3 * len(prompts)  # greedy once, sampled twice each
    assert len(pair.memory_stats()["workers"]) == 2


def test_a_bad_request_fails_alone_after_the_others(pair, single):
    prompts = _prompts(single.tokenizer)
    bad = [single.tokenizer.bos_token_id] * 400  # longer than the context (256)
    blocks = _Blocks()
    with pytest.raises(ValueError, match="exceeds the model context") as error:
        pair.generate(prompts[:5] + [bad] + prompts[5:], SamplingParams(max_new_tokens=4), on_block=blocks)
    assert sorted(blocks) == [i for i in range(len(prompts) + 1) if i != 5]
    assert "request 5" in " ".join(getattr(error.value, "__notes__", []))


def test_a_killed_worker_hands_its_chunk_to_another(local_ray, tiny_llama_dir, single, tmp_path):
    log = tmp_path / "computed.jsonl"
    from parallel_helpers import load_logging

    load = functools.partial(load_logging, tiny_llama_dir, str(log), crash_marker=str(tmp_path / "crashed"),
                    dtype="float32", device="cpu")
    prompts = _prompts(single.tokenizer)
    groups = [(p, [[5, 6], [7]]) for p in prompts]
    with DataParallelLLM(load=load, workers=2) as dp:
        blocks = _Blocks()
        got = dp.score_choices(groups, on_block=blocks)
        assert dp.workers_lost == 1 and len(dp._live) == 2  # restarted, still in the pool
        assert sorted(blocks) == list(range(len(groups)))
    want = single.score_choices(groups)
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert a.is_greedy == b.is_greedy and a.logprobs == pytest.approx(b.logprobs, abs=TOL)
    computed = Counter(tuple(json.loads(line)) for line in log.read_text().splitlines())
    assert set(computed) == {tuple(p) for p in prompts}
    assert max(computed.values()) == 2 and all(n <= 2 for n in computed.values())


def test_retries_are_bounded(local_ray, tiny_llama_dir, single, tmp_path):
    from parallel_helpers import load_logging

    from flexgen_eval.parallel import WorkerLost

    log = tmp_path / "computed.jsonl"
    load = functools.partial(load_logging, tiny_llama_dir, str(log), crash_marker="always", dtype="float32",
                             device="cpu")
    groups = [(p, [[5, 6], [7]]) for p in _prompts(single.tokenizer)]
    with DataParallelLLM(load=load, workers=2, max_retries=1, max_restarts=1) as dp:
        with pytest.raises(WorkerLost, match="lost 2 workers|every worker died"):
            dp.score_choices(groups)
    # no chunk was started more than 1 + max_retries times
    assert max(Counter(log.read_text().splitlines()).values()) <= 2


def test_load_errors_are_the_loaders_own(local_ray, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        DataParallelLLM(str(tmp_path / "missing"), workers=1, threads=1, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="needs 3 CPUs; the Ray cluster has 2"):
        DataParallelLLM(str(tmp_path / "missing"), workers=3, threads=1)
    with pytest.raises(ValueError, match="at least 1"):
        DataParallelLLM(str(tmp_path / "missing"), workers=0)



# -- lm-eval: data_parallel_size --------------------------------------------------------------
LM_EVAL_RUNS = [  # (tasks, limit, shots): all three request types, few-shot contexts that share examples
    (["offline_arc_easy", "offline_lambada_openai", "offline_wikitext"], 3, None),
    (["offline_demo_sequences"], 8, 2),
]


def test_lm_eval_data_parallel_2_gives_the_samples_of_1(local_ray, tiny_llama_dir, flexgen_data_dir, tmp_path):
    pytest.importorskip("lm_eval")
    import eval_checks
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import CachingLM

    from flexgen_eval.lm_eval_backend import FlexGenLM

    manager = eval_checks.task_manager()
    args = dict(pretrained=tiny_llama_dir, dtype="float32", device="cuda:0", batch_size="1")
    one = FlexGenLM(**args)
    want = [eval_checks.evaluate(one, tasks, manager, limit, num_fewshot=shots) for tasks, limit, shots in LM_EVAL_RUNS]
    one.llm.close()
    two = FlexGenLM(**args, data_parallel_size=2)
    try:
        assert isinstance(two.llm, DataParallelLLM) and two.llm.workers == 2
        for (tasks, limit, shots), w in zip(LM_EVAL_RUNS, want):
            got = eval_checks.evaluate(two, tasks, manager, limit, num_fewshot=shots)
            for task in tasks:
                eval_checks.samples_match(w, got, task, TOL)
            # a perplexity is the exp of a mean log-likelihood: tiny random models have ones of 1e15,
            # where the last float32 digits of a sum computed in other blocks show at 1e-5
            eval_checks.metrics_match(w, got, tasks, rel=1e-4)
        # --use_cache: the driver records every result as its chunk arrives
        requests = [Instance("loglikelihood", doc={}, arguments=(q, " four"), idx=0) for q in QUESTIONS]
        path = str(tmp_path / "cache.db")
        first = CachingLM(two, path).loglikelihood(requests)
        assert two.llm.totals["score"]["rows"] > 0
        rows = two.llm.totals["score"]["rows"]
        assert CachingLM(two, path).loglikelihood(requests) == first
        assert two.llm.totals["score"]["rows"] == rows  # all from the cache
    finally:
        two.llm.close()
    with pytest.raises(ValueError, match="model_arg data_parallel_size must be a whole number"):
        FlexGenLM(**args, data_parallel_size="two")


# -- HELM: data_parallel in the client's args ---------------------------------------------------
def test_helm_data_parallel_2_gives_the_predictions_of_1(local_ray, tiny_llama_dir):
    pytest.importorskip("helm")
    from helm.common.cache import BlackHoleCacheConfig
    from helm.common.request import Request

    from flexgen_eval.helm import models
    from flexgen_eval.helm.client import FlexGenClient

    def request(prompt, **kw):
        base = dict(model="flexgen/tiny", model_deployment="flexgen/tiny", prompt=prompt, temperature=0.0,
                    max_tokens=8)
        return Request(**{**base, **kw})

    requests = ([request(q) for q in QUESTIONS] + [request(t, max_tokens=0, echo_prompt=True) for t in OTHERS]
                + [request(OTHERS[0], max_tokens=4, echo_prompt=True, num_completions=2)])

    def predictions(client):
        assert client.prefetch(requests) == len(requests)
        return [[(c.text, [t.logprob for t in c.tokens]) for c in client.make_request(r).completions]
                for r in requests]

    try:
        want = predictions(FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir, end_of_text_token="</s>",
                                         dtype="float32", device="cpu"))
        two = FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir, end_of_text_token="</s>", dtype="float32",
                            device="cpu", data_parallel=2)
        assert isinstance(two.shared.llm, DataParallelLLM)
        got = predictions(two)
    finally:
        models.close_all()
    assert [[text for text, _ in r] for r in got] == [[text for text, _ in r] for r in want]
    for g, w in zip(got, want):
        for (_, lps), (_, want_lps) in zip(g, w):
            assert lps == pytest.approx(want_lps, abs=TOL)
