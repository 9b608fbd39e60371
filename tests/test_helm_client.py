"""The HELM client: request translation on the tiny model, batching, resume, and one offline
run spec end to end through `helm-run` and `helm-summarize`."""
import json
import os
import sys
import threading

import pytest

pytest.importorskip("helm")

import helm_runs  # noqa: E402
from helm.common.cache import BlackHoleCacheConfig, SqliteCacheConfig  # noqa: E402
from helm.common.request import Request  # noqa: E402
from helm.proxy.retry import NonRetriableException  # noqa: E402

from flexgen_core import SamplingParams  # noqa: E402
from flexgen_eval.helm import client as client_module  # noqa: E402
from flexgen_eval.helm.client import FlexGenClient  # noqa: E402

PROMPT = "The capital of France is"
BIN = os.path.dirname(sys.executable)


def req(**kw):
    base = dict(model="flexgen/tiny", model_deployment="flexgen/tiny", prompt=PROMPT, temperature=0.0, max_tokens=12)
    base.update(kw)
    return Request(**base)


@pytest.fixture(scope="module")
def client(tiny_llama_dir):
    return FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir, end_of_text_token="</s>")


def test_greedy_generation_is_the_runtime_output(client):
    result = client.make_request(req())
    assert result.success and len(result.completions) == 1
    llm = client.shared.llm
    ids = llm.tokenizer.encode(PROMPT)
    out = llm.generate([ids], SamplingParams(max_new_tokens=12)).pop().outputs[0]
    got = result.completions[0]
    assert got.text == llm.tokenizer.decode(out.token_ids)
    assert [t.logprob for t in got.tokens] == pytest.approx(out.logprobs)  # real log-probs, not 0
    assert got.logprob == pytest.approx(sum(out.logprobs))
    assert any(t.logprob < -0.01 for t in got.tokens)


def test_echo_is_aligned_with_the_helm_tokenizer(client, tiny_llama_dir):
    from helm.tokenizers.huggingface_tokenizer import HuggingFaceTokenizer

    text = "Question: what is two plus two? Answer: four."
    result = client.make_request(req(prompt=text, max_tokens=0, echo_prompt=True))
    tokens = result.completions[0].tokens
    helm_ids = HuggingFaceTokenizer.create_tokenizer(tiny_llama_dir).__enter__().encode(text, add_special_tokens=False)
    assert len(tokens) == len(helm_ids)  # no BOS added
    assert tokens[0].logprob == 0.0
    expected = client.shared.llm.prompt_logprobs([helm_ids])[0][1:]
    assert [t.logprob for t in tokens[1:]] == pytest.approx(expected)
    assert "".join(t.text for t in tokens) == text
    assert result.completions[0].text == text


def test_echo_then_generate(client):
    result = client.make_request(req(max_tokens=3, echo_prompt=True))
    n_prompt = len(client.tokenizer.encode(PROMPT, add_special_tokens=False))
    tokens = result.completions[0].tokens
    assert tokens[0].logprob == 0.0 and len(tokens) <= n_prompt + 3
    assert result.completions[0].text.startswith(PROMPT)


def test_stop_sequence_cuts_before_the_string(client):
    free = client.make_request(req(max_tokens=20)).completions[0].text
    assert len(free) > 4
    stop = free[3:5]
    cut = client.make_request(req(max_tokens=20, stop_sequences=[stop])).completions[0]
    assert cut.text == free[: free.index(stop)]
    assert cut.finish_reason == {"reason": "stop"}
    assert client.tokenizer.decode([]) == "" and len(cut.tokens) < 20


def test_num_completions(client):
    greedy = client.make_request(req(num_completions=3)).completions
    assert len(greedy) == 3 and len({c.text for c in greedy}) == 1
    sampled = client.make_request(req(num_completions=4, temperature=1.0, random="trial 1")).completions
    assert len(sampled) == 4 and len({c.text for c in sampled}) > 1


def test_bad_requests_are_not_retried(client):
    with pytest.raises(NonRetriableException, match="exceeds the model context of 256"):
        client.make_request(req(prompt="word " * 300))
    with pytest.raises(NonRetriableException, match="num_completions"):
        client.make_request(req(num_completions=0))
    with pytest.raises(NonRetriableException, match="chat messages"):
        client.make_request(req(prompt="", messages=[{"role": "user", "content": "hi"}]))


def test_chat_template_switch_defaults_like_helm(tiny_llama_dir):
    plain = FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir)
    assert plain.apply_chat_template is False  # the tiny tokenizer has no template
    tokenizer = plain.tokenizer
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    try:
        chat = FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir)
        assert chat.apply_chat_template is True
        _, key = chat.prepare(req())
        assert key["prompt"] == f"[user] {PROMPT}\n"
        off = FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir, apply_chat_template=False)
        assert off.prepare(req())[1]["prompt"] == PROMPT
    finally:
        tokenizer.chat_template = None


def test_cache_key_holds_every_output_field(client):
    base = client.prepare(req())[1]
    assert base == client.prepare(req())[1]
    for change in (dict(temperature=0.5), dict(max_tokens=3), dict(stop_sequences=["x"]), dict(echo_prompt=True),
                   dict(num_completions=2), dict(top_p=0.5), dict(random="1"), dict(prompt="other")):
        assert client.prepare(req(**change))[1] != base, change
    assert base["model"] and base["dtype"] == "float32"


def test_threads_are_micro_batched(client):
    prompts = [f"{PROMPT} {w}" for w in ("a", "bb", "the quick", "once upon", "new lines", "Paris")]
    expected = [client.make_request(req(prompt=p)).completions[0].text for p in prompts]
    client.batcher.batch_sizes.clear()
    got = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def work(i):
        barrier.wait()
        got[i] = client.make_request(req(prompt=prompts[i])).completions[0].text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    assert max(client.batcher.batch_sizes) > 1


def test_prefetch_resumes_after_a_kill(tiny_llama_dir, tmp_path, monkeypatch):
    cfg = SqliteCacheConfig(str(tmp_path / "flexgen.sqlite"))
    requests = [req(prompt=f"{PROMPT} {i}", max_tokens=4) for i in range(10)]
    c = FlexGenClient(cfg, model=tiny_llama_dir, prefetch_chunk=4)
    real, calls = client_module.run_calls, []

    def dies_on_second_chunk(shared, batch, **kw):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(shared, batch, **kw)

    monkeypatch.setattr(client_module, "run_calls", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        c.prefetch(requests)
    monkeypatch.setattr(client_module, "run_calls", real)
    again = FlexGenClient(cfg, model=tiny_llama_dir, prefetch_chunk=4)
    assert again.prefetch(requests) == 6  # the first chunk of 4 was saved before the kill
    assert again.prefetch(requests) == 0
    fresh = FlexGenClient(cfg, model=tiny_llama_dir)
    assert all(fresh.make_request(r).cached for r in requests)


def test_helm_config_names_the_compression_for_the_planned_and_the_fixed_policy(tiny_llama_dir, tmp_path):
    import argparse

    import yaml

    from flexgen_eval.commands import helm_config

    parser = argparse.ArgumentParser()
    helm_config.register(parser.add_subparsers(dest="command"))
    flags = ["--compress-cache", "--cache-keys", "channel", "--compression-group-size", "32"]
    for name, fixed in (("planned", []), ("fixed", ["--percent", "100", "0", "100", "0", "100", "0"])):
        args = parser.parse_args(["helm-config", "--model", tiny_llama_dir, "--name", name,
                                  "--out", str(tmp_path / name), *flags, *fixed])
        assert args.func(args) == 0
        with open(tmp_path / name / "model_deployments.yaml") as f:
            (deployment,) = yaml.safe_load(f)["model_deployments"]
        client_args = deployment["client_spec"]["args"]
        c = FlexGenClient(SqliteCacheConfig(str(tmp_path / f"{name}.sqlite")), **client_args)
        p = c.shared.llm.policy
        assert (p.compress_cache, p.cache_keys, p.compression_group_size) == (True, "channel", 32)
        assert "keys per channel" in c.identity["compression"]  # a per-token run's cached results are not reused
    with pytest.raises(SystemExit):
        parser.parse_args(["helm-config", "--model", tiny_llama_dir, "--name", "x", "--cache-keys", "rows"])


def test_the_default_deployment_plans_and_a_kill_loses_at_most_the_block_in_flight(tiny_llama_dir, tmp_path,
                                                                                 monkeypatch):
    import argparse

    import yaml

    from flexgen_eval.commands import helm_config

    parser = argparse.ArgumentParser()
    helm_config.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["helm-config", "--model", tiny_llama_dir, "--name", "tiny-planned",
                              "--out", str(tmp_path / "prod_env")])
    assert args.func(args) == 0
    with open(tmp_path / "prod_env" / "model_deployments.yaml") as f:
        (deployment,) = yaml.safe_load(f)["model_deployments"]
    client_args = deployment["client_spec"]["args"]
    assert not {"policy", "percent", "memory"} & set(client_args)  # nothing fixed: planned at load

    cfg = SqliteCacheConfig(str(tmp_path / "flexgen.sqlite"))
    c = FlexGenClient(cfg, **client_args)
    llm = c.shared.llm
    assert llm.plan is not None and all(s.startswith("detected") for s in llm.budgets.sources.values())
    llm.replan["max_block_size"], llm.bucket_plans = 3, {}  # blocks of 3, so a run spec takes several
    requests = [req(prompt=f"{PROMPT} {i}", max_tokens=4) for i in range(10)]
    real, kept = client_module.run_calls, []

    def killed_after_first_block(shared, calls, on_done=None):
        def once(finished):
            on_done(finished)
            kept.append(len(finished))
            raise KeyboardInterrupt("killed")
        return real(shared, calls, on_done=once)

    monkeypatch.setattr(client_module, "run_calls", killed_after_first_block)
    with pytest.raises(KeyboardInterrupt):
        c.prefetch(requests)
    monkeypatch.setattr(client_module, "run_calls", real)
    again = FlexGenClient(cfg, **client_args)
    assert 1 <= kept[0] <= 3
    assert again.prefetch(requests) == 10 - kept[0]  # the first block's results were cached before the kill


def test_prefetch_keeps_alike_prompts_in_one_chunk(tiny_llama_dir, tmp_path, monkeypatch):
    """HELM's separate multiple-choice method: a question's answers must reach the runtime
    together for their shared start to be computed once, whatever their lengths."""
    questions = ("What is the capital of France?", "Once upon a time there was a small model.")
    answers = ("Paris", "A much longer answer than that", "Rome")
    requests = [req(prompt=f"{q} {a}", max_tokens=0, echo_prompt=True) for a in answers for q in questions]
    c = FlexGenClient(BlackHoleCacheConfig(), model=tiny_llama_dir, prefetch_chunk=3)
    real, chunks = client_module.run_calls, []

    def record(shared, calls, **kw):
        chunks.append({c.tokenizer.decode(list(call.prompt_ids)).split("?")[0][:10] for call in calls})
        return real(shared, calls, **kw)

    monkeypatch.setattr(client_module, "run_calls", record)
    assert c.prefetch(requests) == 6
    assert all(len(chunk) == 1 for chunk in chunks)  # each chunk holds one question's answers


def test_offline_data_layout(tmp_path):
    from flexgen_eval.helm.offline_data import XSUM_TEST_ROWS, prepare

    data = tmp_path / "data"
    (data / "mmlu" / "data" / "test").mkdir(parents=True)
    (data / "mmlu" / "data" / "test" / "abstract_algebra_test.csv").write_text('"q",1,2,3,4,A\n')
    (data / "xsum").mkdir()
    rows = [{"id": i, "dialogue": f"doc {i}", "summary": f"sum {i}"} for i in range(XSUM_TEST_ROWS + 7)]
    rows.insert(3, {"id": -1, "dialogue": float("nan"), "summary": "no document"})  # as in the real file
    (data / "xsum" / "dev.complete980.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "benchmark_output"
    assert len(prepare(str(data), str(out))) == 2
    assert (out / "scenarios/mmlu/data/test/abstract_algebra_test.csv").exists()
    import pickle

    with open(out / "scenarios/summarization/data/xsum-sampled.pk", "rb") as f:
        splits = pickle.load(f)
    assert len(splits["train"]) == 7 and len(splits["test"]) == XSUM_TEST_ROWS
    assert splits["test"][0] == {"document": "doc 7", "summary": "sum 7"}
    assert prepare(str(data), str(out)) == []  # idempotent


def test_helm_run_end_to_end(tiny_llama_dir, tmp_path):
    """helm-config, then one offline run spec through helm-run with the batching runner and with
    the stock runner (micro-batching, 3 threads): same predictions; then helm-summarize."""
    import argparse

    from flexgen_eval.commands import helm_config

    parser = argparse.ArgumentParser()
    helm_config.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["helm-config", "--model", tiny_llama_dir, "--name", "tiny",
                              "--out", str(tmp_path / "prod_env")])
    assert args.func(args) == 0
    entry = "synthetic_reasoning:mode=pattern_match,model=flexgen/tiny"
    common = [os.path.join(BIN, "helm-run"), "--run-entries", entry, "--max-eval-instances", "5",
              "--local-path", "prod_env", "-o", "out"]
    log = helm_runs.run(common + ["--suite", "batched", "--runner-class-name", "flexgen_eval.helm.runner.BatchingRunner"],
               tmp_path)
    assert "flexgen: batch of 5 requests" in log
    helm_runs.run(common + ["--suite", "threads", "-n", "3", "--disable-cache"], tmp_path)
    batched = helm_runs.predictions(tmp_path / "out", "batched")
    threaded = helm_runs.predictions(tmp_path / "out", "threads")
    assert len(batched) == 5 and batched == threaded
    helm_runs.run([os.path.join(BIN, "helm-summarize"), "--suite", "batched", "-o", "out"], tmp_path)
    assert (tmp_path / "out" / "runs" / "batched" / "summary.json").exists()


def test_confs_expand_to_the_paper_run_specs():
    from helm.benchmark.config_registry import register_builtin_configs_from_helm_package
    from helm.benchmark.presentation.run_entry import read_run_entries
    from helm.benchmark.run import run_entries_to_run_specs

    register_builtin_configs_from_helm_package()
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scenarios", "helm")
    model = "openai/gpt2"  # any registered text model: the confs leave the model to --models-to-run
    paper = run_entries_to_run_specs(read_run_entries([os.path.join(here, "paper.conf")]).entries,
                                     models_to_run=[model])
    assert [s.adapter_spec.max_eval_instances for s in paper] == [96, 850, 100, 100, 515, 515, 518]
    assert {s.adapter_spec.model for s in paper} == {model}
    assert paper[-1].adapter_spec.temperature == 0.3
    offline = run_entries_to_run_specs(read_run_entries([os.path.join(here, "offline.conf")]).entries,
                                       models_to_run=[model])
    assert len(offline) == 4
