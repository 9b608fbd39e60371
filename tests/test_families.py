"""The families that extend Llama (Qwen3, OLMo 2): identical to HF transformers under every placement,
with shared prefixes on and off and CPU attention on and off; their own errors for what they refuse."""
import hf_reference
import pytest
import tiny_models

from flexgen_core import LLM, ModelSpec, Policy, SamplingParams

SHARED = list(range(30, 50))  # 20 tokens every prompt of the first group starts with (a few-shot header, say)
PROMPTS = [SHARED + [5, 17, 33], SHARED + [7, 8], SHARED + [100, 101, 102, 103], [250, 251, 252] * 8,
           [11, 12, 13, 14, 15]]
NEW = 12
MIX = (30, 50, 20)
POLICIES = {
    "all-device": Policy(gpu_batch_size=2, num_gpu_batches=2),
    "all-cpu": Policy(weights=(0, 100, 0), cache=(0, 100, 0), activations=(0, 100, 0), gpu_batch_size=4),
    "all-disk": Policy(weights=(0, 0, 100), cache=(0, 0, 100), activations=(0, 0, 100), gpu_batch_size=4),
    "mix": Policy(weights=MIX, cache=MIX, activations=MIX, gpu_batch_size=2, num_gpu_batches=2),
    "mix-cpu-attention": Policy(weights=MIX, cache=MIX, activations=MIX, gpu_batch_size=4, cpu_attention=True),
}
FAMILIES = {
    "qwen3": dict(model_type="qwen3", head_dim=24),  # head_dim not hidden / heads
    "qwen3-tied": dict(model_type="qwen3", tie_word_embeddings=True, num_key_value_heads=1),
    # every layer within a window shorter than the long prompts
    "qwen3-sliding": dict(model_type="qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=0),
    "olmo2": dict(model_type="olmo2"),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    path = tiny_models.tiny_llama(str(tmp_path_factory.mktemp(request.param)), seed=7, norms=True,
                                  **FAMILIES[request.param])
    hf = hf_reference.load(path)
    return path, [hf_reference.greedy(hf, p, NEW) for p in PROMPTS], \
        [hf_reference.token_logprobs(hf, p) for p in PROMPTS]


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefixes", "no-sharing"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_greedy_tokens_and_logprobs_match_hf(family, name, share, tmp_path):
    path, greedy, prompt_lps = family
    with LLM.from_pretrained(path, policy=POLICIES[name], offload_dir=str(tmp_path)) as llm:
        llm.share_prefixes = share
        outs = llm.generate(PROMPTS, SamplingParams(max_new_tokens=NEW, ignore_eos=True))
        echoed = llm.prompt_logprobs(PROMPTS)
        scores = llm.score([(p[:4], p[4:]) for p in PROMPTS])
    for out, (tokens, logprobs) in zip(outs, greedy):
        assert out.outputs[0].token_ids == tokens
        assert out.outputs[0].logprobs == pytest.approx(logprobs, abs=1e-4)
    for got, want in zip(echoed, prompt_lps):
        assert got[1:] == pytest.approx(want, abs=1e-4)
    for score, want in zip(scores, prompt_lps):
        assert score.logprobs == pytest.approx(want[3:], abs=1e-4)


def test_family_sizes_come_from_their_layers():
    from flexgen_core.planning.sizes import model_sizes

    for name, extra in (("qwen3", {"head_dim": 128}), ("olmo2", {})):
        cfg = {"model_type": name, "vocab_size": 1000, "hidden_size": 256, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512, **extra}
        spec = ModelSpec.from_hf_config(cfg)
        assert spec.family == name
        d = spec.head_dim
        qk_norm = 2 * d if name == "qwen3" else (4 + 2) * d
        norms = 2 * 256
        matrices = 256 * 4 * d + 2 * 256 * 2 * d + 4 * d * 256 + 3 * 256 * 512
        assert model_sizes(spec).layers["decoder"].stored == matrices + qk_norm + norms


def test_a_mix_of_sliding_and_global_layers_is_refused_naming_the_field():
    cfg = {"model_type": "qwen3", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 4,
           "num_attention_heads": 4, "intermediate_size": 128, "use_sliding_window": True, "sliding_window": 16,
           "layer_types": ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]}
    with pytest.raises(ValueError, match="layer_types mixes"):
        ModelSpec.from_hf_config(cfg)
    assert ModelSpec.from_hf_config({**cfg, "use_sliding_window": False}).sliding_window is None


def test_an_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"unsupported architecture.*supported model types: \[.*'olmo2'.*'qwen3'"):
        ModelSpec.from_hf_config({"model_type": "bloom", "architectures": ["BloomForCausalLM"]})


LOGLIKELIHOOD = [("The capital of France is", " Paris."), ("The capital of France is", " Rome."),
                 ("Question: what is two plus two? Answer:", " four"), ("", "The quick brown fox"),
                 ("A B C D " * 10, "E F G")]


def test_lm_eval_per_sample_loglikelihoods_match_hf_for_every_family(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from flexgen_eval.lm_eval_backend import FlexGenLM

    requests = [Instance("loglikelihood", doc={}, arguments=args, idx=0) for args in LOGLIKELIHOOD]
    for name, extra in FAMILIES.items():
        path = tiny_models.tiny_llama(str(tmp_path / name), seed=11, norms=True, **extra)
        want = HFLM(pretrained=path, dtype="float32", device="cpu", batch_size=2).loglikelihood(requests)
        lm = FlexGenLM(pretrained=path, dtype="float32", device="cpu", batch_size="1")
        try:
            got = lm.loglikelihood(requests)
        finally:
            lm.llm.close()
        assert [g for _, g in got] == [g for _, g in want], name
        assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4), name
