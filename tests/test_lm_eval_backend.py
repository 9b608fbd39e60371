"""`lm_eval --model flexgen` against lm-eval's own `hf` backend on the same tiny checkpoint:
identical per-request results (log-likelihoods to 1e-4, same greedy flags and generations),
`--use_cache` resume, registration (.pth hook, console script, entry point), the offline tasks."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

pytest.importorskip("lm_eval")
import eval_checks  # noqa: E402
from eval_checks import evaluate, metrics, metrics_match, samples_match  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import CachingLM  # noqa: E402

from flexgen_eval import lm_eval_register  # noqa: E402
from flexgen_eval.lm_eval_backend import FlexGenLM, build_policy, parse_percent  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(REPO, "scenarios", "lm_eval")
TOL = 1e-4


@pytest.fixture(scope="module")
def hf_lm(tiny_llama_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def flexgen_lm(tiny_llama_dir):
    # small blocks, so that requests span several blocks and chunks; device as the CLI passes it
    lm = FlexGenLM(pretrained=tiny_llama_dir, dtype="float32", device="cuda:0", batch_size="1",
                   gpu_batch_size=2, num_gpu_batches=2)
    yield lm
    lm.llm.close()


@pytest.fixture(scope="module")
def task_manager():
    return eval_checks.task_manager()


def _instances(kind, args_list):
    return [Instance(kind, doc={}, arguments=args, idx=0) for args in args_list]


LOGLIKELIHOOD = [
    ("", "The capital of France"),  # empty context: the prefix token conditions
    ("The capital of France is ", "Paris."),  # trailing space moves to the continuation
    ("The capital of France is", " Paris."),
    ("The capital of France is", " Rome."),  # shares its context with the one above
    ("The capital of France is", " Paris."),  # a duplicate
    ("Question: what is two plus two? Answer:", " four"),
    ("Question: what is two plus two? Answer:", " 4"),
    ("A B C D " * 40, "E F G"),  # longer than the context (256): truncated from the left
    ("new lines matter\n\n", "the quick brown fox"),
]
ROLLING = [("",), ("the quick brown fox jumps over the lazy dog",), (" ".join(["Once upon a time there was a small model"] * 40),)]
GENERATE = [
    ("The capital of France is", {"until": ["."], "max_gen_toks": 12}),
    ("Question: what is two plus two? Answer:", {"until": ["\n", "Question"], "max_gen_toks": 20, "do_sample": False}),
    ("A B C D E F", {"until": ["Z"], "max_gen_toks": 16}),
    ("Once upon a time", {"until": ["."], "max_gen_toks": 12}),
    ("A B C " * 60, {"until": ["."], "max_gen_toks": 8}),  # context truncated to leave room for 8 tokens
]


def test_loglikelihood_matches_hf(hf_lm, flexgen_lm):
    want = hf_lm.loglikelihood(_instances("loglikelihood", LOGLIKELIHOOD))
    got = flexgen_lm.loglikelihood(_instances("loglikelihood", LOGLIKELIHOOD))
    for (w_lp, w_greedy), (g_lp, g_greedy) in zip(want, got, strict=True):
        assert g_lp == pytest.approx(w_lp, abs=TOL)
        assert g_greedy == w_greedy


def test_few_shot_contexts_share_their_examples(hf_lm, flexgen_lm, prefix_passes):
    """Contexts that start with the same examples go to the same blocks, which compute them once."""
    shots = "Question: what is one plus one? Answer: two\n\nQuestion: what is two plus two? Answer: four\n\n"
    pairs = [(shots + f"Question: what is {n} plus two? Answer:", choice)
             for n in ("one", "three", "five", "seven", "nine", "ten") for choice in (" three", " eleven")]
    pairs += [("Once upon a time", " there"), ("The capital of France is", " Paris.")]
    want = hf_lm.loglikelihood(_instances("loglikelihood", pairs))
    got = flexgen_lm.loglikelihood(_instances("loglikelihood", pairs))
    assert prefix_passes  # at least one block of 4 contexts computed the examples once
    for (w_lp, w_greedy), (g_lp, g_greedy) in zip(want, got, strict=True):
        assert g_lp == pytest.approx(w_lp, abs=TOL)
        assert g_greedy == w_greedy


def test_loglikelihood_rolling_matches_hf(hf_lm, flexgen_lm):
    want = hf_lm.loglikelihood_rolling(_instances("loglikelihood_rolling", ROLLING))
    got = flexgen_lm.loglikelihood_rolling(_instances("loglikelihood_rolling", ROLLING))
    assert got[0] == 0.0
    assert got == pytest.approx(want, abs=TOL)


def test_generate_until_matches_hf(hf_lm, flexgen_lm):
    want = hf_lm.generate_until(_instances("generate_until", GENERATE))
    got = flexgen_lm.generate_until(_instances("generate_until", GENERATE))
    assert got == want


def test_chat_template_matches_hf(hf_lm, flexgen_lm):
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    hf_lm.tokenizer.chat_template = flexgen_lm.tokenizer.chat_template = template
    try:
        for prompt in (True, False):
            assert flexgen_lm.apply_chat_template(chat, prompt) == hf_lm.apply_chat_template(chat, prompt)
        assert flexgen_lm.chat_template(True) == template
        assert flexgen_lm.tokenizer_name == hf_lm.tokenizer_name
    finally:
        hf_lm.tokenizer.chat_template = flexgen_lm.tokenizer.chat_template = None


def test_demo_task_matches_hf_without_data(hf_lm, flexgen_lm, task_manager):
    task = "offline_demo_sequences"
    hf = evaluate(hf_lm, [task], task_manager, 8, num_fewshot=2)
    fg = evaluate(flexgen_lm, [task], task_manager, 8, num_fewshot=2)
    assert metrics(fg, task) == metrics(hf, task)
    samples_match(hf, fg, task, TOL)


@pytest.mark.parametrize("tasks,limit,shots", [
    (["offline_arc_easy", "offline_lambada_openai", "offline_hellaswag", "offline_mmlu_astronomy"], 4, None),
    (["offline_wikitext"], 1, None),  # documents of thousands of tokens: many rolling windows each
    (["offline_mmlu_management"], 8, 1),  # every question after the same example: blocks share it
])
def test_offline_tasks_match_hf(hf_lm, flexgen_lm, task_manager, flexgen_data_dir, tasks, limit, shots):
    hf = evaluate(hf_lm, tasks, task_manager, limit, num_fewshot=shots)
    fg = evaluate(flexgen_lm, tasks, task_manager, limit, num_fewshot=shots)
    metrics_match(hf, fg, tasks)
    for task in tasks:
        samples_match(hf, fg, task, TOL)


def test_missing_data_dir_names_the_variable(monkeypatch):
    import importlib.util

    # by path: a bare `import utils` could find another project's module of that name
    spec = importlib.util.spec_from_file_location("flexgen_lm_eval_task_utils", os.path.join(TASKS_DIR, "utils.py"))
    task_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task_utils)
    monkeypatch.delenv("FLEXGEN_DATA_DIR", raising=False)
    with pytest.raises(RuntimeError, match="FLEXGEN_DATA_DIR"):
        task_utils.arc_easy()
    assert len(task_utils.demo_sequences()["test"]) == 40  # the demo task needs no data


# -- --use_cache ----------------------------------------------------------------------------
class _Interrupted(KeyboardInterrupt):
    pass


class _CountingLLM:
    """Delegates to an LLM, counting requests as blocks hand them over; raises (like a killed run)
    once `fail_after` blocks have finished."""

    def __init__(self, llm, fail_after=None):
        self.llm, self.fail_after, self.calls, self.blocks, self.requests = llm, fail_after, 0, 0, 0

    def __getattr__(self, name):
        target = getattr(self.llm, name)
        if name not in ("score", "score_choices", "generate"):
            return target

        def call(items, *args, on_block=None):
            self.calls += 1

            def counted(results):
                if self.fail_after is not None and self.blocks >= self.fail_after:
                    raise _Interrupted
                self.blocks += 1
                self.requests += sum(len(items[i][1]) for i, _ in results) if name == "score_choices" else len(results)
                on_block(results)

            return target(items, *args, on_block=counted if on_block else None)

        return call


def test_use_cache_resumes_without_recomputing(flexgen_lm, tmp_path):
    llm = flexgen_lm.llm
    requests = _instances("loglikelihood", [(f"Question: what is {i} plus two? Answer:", " four") for i in range(10)])
    reference = flexgen_lm.loglikelihood(requests)
    path = str(tmp_path / "cache.db")

    flaky = _CountingLLM(llm, fail_after=2)  # 2 blocks of 4 requests each (block 2x2), then "killed"
    killed = CachingLM(FlexGenLM(llm=flaky), path)
    with pytest.raises(_Interrupted):
        killed.loglikelihood(requests)
    killed.dbdict.close()  # what the process exit would do
    assert flaky.requests == 8

    resumed = _CountingLLM(llm)
    results = CachingLM(FlexGenLM(llm=resumed), path).loglikelihood(requests)
    assert resumed.requests == len(requests) - 8
    assert [r[1] for r in results] == [r[1] for r in reference]
    assert [r[0] for r in results] == pytest.approx([r[0] for r in reference], abs=1e-6)

    # every request type reports through the cache hook under the key CachingLM looks up
    for kind, args in (("loglikelihood_rolling", ROLLING), ("generate_until", GENERATE[:2])):
        getattr(CachingLM(FlexGenLM(llm=llm), path), kind)(_instances(kind, args))
    again = _CountingLLM(llm)
    cached = CachingLM(FlexGenLM(llm=again), path)
    cached.loglikelihood_rolling(_instances("loglikelihood_rolling", ROLLING))
    cached.generate_until(_instances("generate_until", GENERATE[:2]))
    assert again.calls == 0


# -- model_args -------------------------------------------------------------------------------
def test_model_args(tiny_llama_dir):
    assert parse_percent([20, 80, 0, 100, 0, 100]) == [20, 80, 0, 100, 0, 100]
    assert parse_percent("[20,80,0,100,0,100]") == parse_percent("20 80 0 100 0 100")
    with pytest.raises(ValueError, match="six numbers"):
        parse_percent("[20,80]")
    with pytest.raises(TypeError, match="unknown model_args.*bogus"):
        FlexGenLM(pretrained=tiny_llama_dir, bogus=1)
    with pytest.raises(ValueError, match="pretrained"):
        FlexGenLM(batch_size="auto", device="cpu")
    cli = {"batch_size": "16", "max_batch_size": None, "device": "cpu"}
    for args in (f"pretrained={tiny_llama_dir},percent=[0,100,100,0,100,0],num_gpu_batches=3,cpu_attention=true",
                 f"pretrained={tiny_llama_dir},percent=0/100/100/0/100/0,num_gpu_batches=3,cpu_attention=True"):
        lm = FlexGenLM.create_from_arg_string(args, cli)
        try:
            p = lm.llm.policy
            assert (p.weights, p.gpu_batch_size, p.num_gpu_batches, p.cpu_attention) == ((0, 100, 0), 16, 3, True)
        finally:
            lm.llm.close()
    assert build_policy(percent="[0,100,0,100,100,0]", cpu_attention="0.25").cpu_attention == 0.25
    for bad in ("1.5", "sometimes"):
        with pytest.raises(ValueError, match="cpu_attention must be true, false or a share"):
            build_policy(percent="[0,100,0,100,100,0]", cpu_attention=bad)


def test_without_a_policy_the_backend_plans_and_batch_size_caps_the_blocks(tiny_llama_dir):
    requests = _instances("loglikelihood", [(f"Question: what is {i} plus two? Answer:", " four") for i in range(12)])
    blocks = {}
    for batch_size in ("1", "auto", "3"):
        lm = FlexGenLM.create_from_arg_string(f"pretrained={tiny_llama_dir}", {"batch_size": batch_size, "device": "cpu"})
        try:
            assert lm.llm.replan is not None  # planned: no policy was named
            lm.loglikelihood(requests)
            blocks[batch_size] = {plan.policy.block_size for plan in lm.llm.bucket_plans.values()}
        finally:
            lm.llm.close()
    assert min(blocks["1"]) > 3 and blocks["auto"] == blocks["1"]
    assert max(blocks["3"]) <= 3


# -- registration -------------------------------------------------------------------------------
def test_register_keeps_builtin_backends():
    code = ("from flexgen_eval.lm_eval_register import register; register(); "
            "from lm_eval.api.registry import get_model; "
            "print(get_model('flexgen').__name__, get_model('hf').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["FlexGenLM", "HFLM"]


def test_running_lm_eval_detection():
    yes = [["python", "-m", "lm_eval", "run"], ["/v/bin/lm_eval", "run"], ["/v/bin/python", "/v/bin/lm-eval"],
           ["python", "-mlm_eval"], ["python", "-X", "importtime", "-W", "ignore", "-u", "-m", "lm_eval", "run"],
           ["python", "-Ximporttime", "-m", "lm_eval.__main__"], ["python", "-B", "/v/bin/lm_eval"]]
    no = [["python", "-c", "pass"], ["python", "script.py", "lm_eval"], ["python", "-m", "pytest", "lm_eval"],
          ["python", "-X", "lm_eval", "tool.py"], ["python", "-c", "import x", "-m", "lm_eval"], ["python"]]
    assert all(lm_eval_register.running_lm_eval(a) for a in yes)
    assert not any(lm_eval_register.running_lm_eval(a) for a in no)


def test_pth_hook_registers_only_for_lm_eval(tmp_path):
    """Run the installed hook's line in a fresh interpreter, as a program named lm_eval and as another."""
    with open(os.path.join(REPO, "flexgen_eval", lm_eval_register.PTH_NAME)) as f:
        (line,) = [x for x in f.read().splitlines() if x.strip()]
    assert line.startswith("import ")
    probe = "exec({!r})\nfrom lm_eval.api.registry import model_registry\nprint('flexgen' in model_registry)\n"
    for name, expected in (("lm_eval", "True"), ("other_tool", "False")):
        script = tmp_path / name
        script.write_text(probe.format(line))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, out.stderr


def test_installed_hook_and_entry_points():
    from importlib.metadata import distribution, entry_points

    try:
        dist = distribution("flexgen-eval")
    except Exception:  # noqa: BLE001
        pytest.skip("flexgen-eval is not installed in this environment")
    points = {ep.name: ep.value for ep in entry_points(group="lm_eval.models")}
    assert points.get("flexgen") == lm_eval_register.TARGET
    assert "flexgen-lm-eval" in {ep.name for ep in entry_points(group="console_scripts")}
    import site

    assert dist.version
    assert any(os.path.isfile(os.path.join(d, lm_eval_register.PTH_NAME)) for d in site.getsitepackages()), \
        "the .pth hook is not in site-packages: reinstall with pip install -e ."


def test_wheel_puts_the_hook_at_the_root(tmp_path):
    """A real wheel build (no network: no build isolation) of a copy of the packaging files."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for pkg in ("flexgen_core", "flexgen_eval"):
        shutil.copytree(os.path.join(REPO, pkg), src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert lm_eval_register.PTH_NAME in names
    record = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("RECORD"))).decode()
    assert lm_eval_register.PTH_NAME + ",sha256=" in record


def test_compression_model_args_reach_the_planned_and_the_fixed_policy(tiny_llama_dir):
    """compression_bits / compression_group_size / weight_ranges / cache_keys, planned or with a policy."""
    cli = {"batch_size": None, "max_batch_size": None, "device": "cpu"}
    chosen = "compress_weight=true,compress_cache=true,compression_bits=8,compression_group_size=32,weight_ranges=mse," \
             "cache_keys=channel"
    for extra in ("", ",percent=[100,0,100,0,100,0]"):
        lm = FlexGenLM.create_from_arg_string(f"pretrained={tiny_llama_dir},{chosen}{extra}", cli)
        try:
            p = lm.llm.policy
            assert (p.compression_bits, p.compression_group_size, p.weight_ranges, p.cache_keys) == (8, 32, "mse",
                                                                                                     "channel")
            assert (lm.llm.plan is None) == bool(extra)
            if lm.llm.plan is not None:  # later buckets are planned with the same compression
                assert lm.llm.policy_for(200, 8).cache_keys == "channel"
        finally:
            lm.llm.close()
    with pytest.raises(ValueError, match="cache_keys must be one of token, channel"):
        FlexGenLM(pretrained=tiny_llama_dir, compress_cache="true", cache_keys="rows", device="cpu")
    with pytest.raises(ValueError, match="compression_group_size must be a whole number"):
        FlexGenLM(pretrained=tiny_llama_dir, compression_group_size="sixty", device="cpu")
