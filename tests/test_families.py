"""Every family beyond OPT and Llama (Qwen3, OLMo 2, Gemma 2 and 3, Phi-3, GPT-NeoX): identical to HF
transformers under every placement, with shared prefixes on and off and CPU attention on and off, with
prompts longer than the tiny sliding windows; sliding layers keep only their window; their sizes are
HF's; their own errors for what they refuse."""
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
    # a mixture's layer keeps its own weights and two experts on the device, one on the CPU, one on disk
    "experts-split": Policy(weights=(60, 20, 20), cache=MIX, activations=MIX, gpu_batch_size=2, num_gpu_batches=2),
}
MOE = ("mixtral", "qwen3-moe", "olmoe")
FAMILIES = {
    "qwen3": dict(model_type="qwen3", head_dim=24),  # head_dim not hidden / heads
    "qwen3-tied": dict(model_type="qwen3", tie_word_embeddings=True, num_key_value_heads=1),
    # every layer within a window shorter than the long prompts
    "qwen3-sliding": dict(model_type="qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=0),
    # sliding and global layers in one model, each sized and masked by its own kind
    "qwen3-mixed-sliding": dict(model_type="qwen3", use_sliding_window=True, sliding_window=8,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "olmo2": dict(model_type="olmo2"),
    # soft caps low enough that tanh bends the tiny model's scores and logits; a score scale of its own;
    # layers alternating sliding (window 8) and global
    "gemma2": dict(model_type="gemma2", head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                   attn_logit_softcapping=4.0, final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh",
                   tie_word_embeddings=True),
    # two sliding layers to each global one, a rotary base of their own, the global one's scaled
    "gemma3": dict(model_type="gemma3_text", head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                   sliding_window_pattern=3, rope_parameters={
                       "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                       "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}),
    "phi3": dict(model_type="phi3", sliding_window=8, partial_rotary_factor=0.5),
    "gpt-neox": dict(model_type="gpt_neox", rotary_pct=0.5, use_parallel_residual=True),
    "gpt-neox-sequential": dict(model_type="gpt_neox", rotary_pct=0.25, use_parallel_residual=False,
                                hidden_act="gelu"),
    # 2 of 4 experts per token
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, intermediate_size=48),
    "qwen3-moe": dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40,
                      head_dim=24, norm_topk_prob=True),
    "olmoe": dict(model_type="olmoe", num_experts=4, num_experts_per_tok=2, intermediate_size=40,
                  eos_token_id=2, pad_token_id=0),
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


@pytest.mark.parametrize("name", MOE)
def test_the_experts_of_one_layer_are_placed_apart(name, tmp_path):
    """Under "experts-split" every expert layer has experts on all three tiers, each whole and in tier order,
    with its own weights on the device: what the parity test above then runs."""
    path = tiny_models.tiny_llama(str(tmp_path / "m"), seed=7, norms=True, **FAMILIES[name])
    with LLM.from_pretrained(path, policy=POLICIES["experts-split"], offload_dir=str(tmp_path)) as llm:
        store = llm.weights
        expert_layers = [j for j, experts in enumerate(store.experts) if experts]
        assert len(expert_layers) == llm.spec.num_layers
        order = ["gpu", "cpu", "disk"]
        for j in expert_layers:
            assert store.buffers[j].only_tier() == "gpu"
            tiers = [buffer.only_tier() for _, _, buffer in store.experts[j]]
            assert set(tiers) == set(order) and tiers == sorted(tiers, key=order.index)
        placed = llm.memory_stats()["experts"]
        assert sum(placed["count"].values()) == 4 * len(expert_layers)
        assert placed["bytes"] == {t: sum(layout.nbytes for experts in store.experts for _, layout, buffer in experts
                                          if buffer.only_tier() == t) for t in order}


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


@pytest.mark.parametrize("name", list(FAMILIES))
def test_weight_counts_are_hfs(name):
    """What the planner counts for a model is what HF builds from the same config (tied tables once)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from flexgen_core.planning.sizes import model_sizes

    extra = dict(FAMILIES[name])
    shape = dict(vocab_size=320, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(extra.pop("model_type"), **{**shape, **extra})
    model = AutoModelForCausalLM.from_config(config)
    spec = ModelSpec.from_hf_config(config.to_dict())
    assert model_sizes(spec).weight_values() == sum(p.numel() for p in model.parameters())


def test_what_is_refused_is_named():
    base = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128}
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}
    with pytest.raises(ValueError, match="longrope.*use the 4k checkpoint"):
        ModelSpec.from_hf_config({"model_type": "phi3", **base, "rope_scaling": longrope})
    with pytest.raises(ValueError, match="multimodal.*gemma3_text"):
        ModelSpec.from_hf_config({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                                  "text_config": base})
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        ModelSpec.from_hf_config({"model_type": "gemma3_text", **base, "use_bidirectional_attention": True})
    moe = {**base, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    with pytest.raises(ValueError, match="mlp_only_layers, decoder_sparse_step"):
        ModelSpec.from_hf_config({"model_type": "qwen3_moe", **moe, "mlp_only_layers": [0]})
    with pytest.raises(ValueError, match="clip_qkv=8.0 is not supported"):
        ModelSpec.from_hf_config({"model_type": "olmoe", **moe, "clip_qkv": 8.0})
    with pytest.raises(ValueError, match="unsupported activation 'relu6'"):
        ModelSpec.from_hf_config({"model_type": "gpt_neox", **base, "hidden_act": "relu6"})


def test_sliding_layers_follow_layer_types():
    cfg = {"model_type": "qwen3", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 4,
           "num_attention_heads": 4, "intermediate_size": 128, "use_sliding_window": True, "sliding_window": 16,
           "layer_types": ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]}
    assert ModelSpec.from_hf_config(cfg).windows() == [None, None, 16, 16]
    assert ModelSpec.from_hf_config({**cfg, "use_sliding_window": False}).windows() == [None] * 4
    old_style = {k: v for k, v in cfg.items() if k != "layer_types"}
    assert ModelSpec.from_hf_config({**old_style, "max_window_layers": 1}).windows() == [None, 16, 16, 16]
    with pytest.raises(ValueError, match="layer_types must name"):
        ModelSpec.from_hf_config({**cfg, "layer_types": ["full_attention", "chunked_attention"] * 2})


def test_an_unsupported_architecture_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"unsupported architecture.*supported model types: \[.*'gemma2'.*'gpt_neox'"):
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


def test_a_sliding_layer_keeps_only_its_window(tmp_path, monkeypatch):
    """The cache of a sliding layer is a ring of its window on every tier; a global layer keeps every
    position. Outputs stay HF's (the parity tests above, with prompts longer than the window)."""
    from flexgen_core.memory import kv_cache

    caches = []  # per block: (layer, batch) -> its K and V buffers' shapes
    original = kv_cache.BlockCache.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        caches.append({key: [buf.shape for buf in pair] for key, pair in self.entries.items()})

    monkeypatch.setattr(kv_cache.BlockCache, "__init__", recording)
    path = tiny_models.tiny_llama(str(tmp_path / "m"), seed=7, **FAMILIES["qwen3-mixed-sliding"])
    policy = Policy(weights=MIX, cache=MIX, activations=MIX, gpu_batch_size=2, num_gpu_batches=2)
    with LLM.from_pretrained(path, policy=policy, offload_dir=str(tmp_path / "off")) as llm:
        llm.generate([PROMPTS[3], PROMPTS[0]], SamplingParams(max_new_tokens=NEW, ignore_eos=True))
    (cache,) = caches
    positions = {j: {shape[1] for (layer, _), shapes in cache.items() if layer == j for shape in shapes}
                 for j in range(3)}
    longest = max(len(PROMPTS[3]), len(PROMPTS[0])) + NEW - 1
    assert positions == {0: {8}, 1: {longest}, 2: {8}}



@pytest.mark.parametrize("sparsity", [1.0, 0.4], ids=["dense", "sparse"])
def test_sliding_rings_give_the_same_outputs_packed_and_on_every_tier(tmp_path, sparsity):
    """4-bit caches and top-k attention over rings: whatever tier a ring's rows live on and wherever
    they are attended, the same outputs as on the device."""
    path = tiny_models.tiny_llama(str(tmp_path / "m"), seed=7, norms=True, **FAMILIES["qwen3-mixed-sliding"])
    packed = dict(compress_cache=True, attn_sparsity=sparsity, gpu_batch_size=8)
    results = []
    for policy in (Policy(**packed), Policy(weights=MIX, cache=(0, 0, 100), **packed),
                   Policy(weights=MIX, cache=MIX, activations=MIX, cpu_attention=0.5, **packed)):
        with LLM.from_pretrained(path, policy=policy, offload_dir=str(tmp_path / "off")) as llm:
            results.append(llm.generate(PROMPTS, SamplingParams(max_new_tokens=NEW, ignore_eos=True)))
    for other in results[1:]:
        for want, got in zip(results[0], other):
            assert got.outputs[0].token_ids == want.outputs[0].token_ids
            assert got.outputs[0].logprobs == pytest.approx(want.outputs[0].logprobs, abs=1e-5)


def test_an_8_bit_ring_stays_within_rounding_of_fp32(tmp_path):
    """A ring read back wrongly (a slot's column mistaken, a stale token kept) moves log-probs by whole
    units; 8-bit codes move them by hundredths (0.028 at most measured) and keep every greedy token."""
    path = tiny_models.tiny_llama(str(tmp_path / "m"), seed=7, norms=True, **FAMILIES["qwen3-mixed-sliding"])
    outs = {}
    for bits in (None, 8):
        packed = dict(compress_cache=True, compression_bits=bits) if bits else {}
        policy = Policy(weights=MIX, cache=(0, 50, 50), gpu_batch_size=8, **packed)
        with LLM.from_pretrained(path, policy=policy, offload_dir=str(tmp_path / "off")) as llm:
            outs[bits] = llm.generate(PROMPTS, SamplingParams(max_new_tokens=NEW, ignore_eos=True))
    for want, got in zip(outs[None], outs[8]):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
        assert got.outputs[0].logprobs == pytest.approx(want.outputs[0].logprobs, abs=0.1)


@pytest.mark.parametrize("name", ["pythia-12b", "phi-3-medium", "qwen3-14b", "qwen3-32b", "olmo-2-13b", "olmo-2-32b",
                                  "gemma-2-27b", "gemma-3-27b", "mixtral-8x7b", "qwen3-30b-a3b", "olmoe-1b-7b"])
def test_built_in_sizes_are_what_hf_builds_from_them(name):
    """Each built-in config, read by HF (as `bench` does for its baselines), builds a model of exactly
    the parameters the planner counts (on the meta device: no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from flexgen_core.model.spec import BUILTIN_CONFIGS
    from flexgen_core.planning.sizes import model_sizes

    cfg = dict(BUILTIN_CONFIGS[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    spec = ModelSpec.from_name(name)
    assert model_sizes(spec).weight_values() == sum(p.numel() for p in model.parameters())
    assert ModelSpec.from_hf_config(config.to_dict(), name=name).windows() == spec.windows()


def test_an_expert_layer_computes_k_of_e_experts_per_token_and_reads_the_experts_its_tokens_touch():
    """The cost model's FLOPs per token count the router and k experts, as the runtime computes them; a step
    reads the experts some token is routed to: k of E for one token, nearly all of them in a prefill."""
    from flexgen_core.planning.cost_model import BlockModel, Step
    from flexgen_core.planning.hardware import PRESETS
    from flexgen_core.planning.sizes import model_sizes

    spec = ModelSpec.from_name("mixtral-8x7b")
    h, f = 4096, 14336
    attention = h * 4096 + 2 * h * 1024 + 4096 * h
    own = attention + 8 * h + 2 * h
    decoder = model_sizes(spec).layers["decoder"]
    assert decoder.matmul == attention + 8 * h + 2 * 3 * h * f
    assert decoder.streamed == own + 8 * 3 * h * f
    assert (decoder.experts, decoder.experts_per_token, decoder.expert_values) == (8, 2, 8 * 3 * h * f)
    assert decoder.streamed_for(1) == own + 2 * 3 * h * f
    assert decoder.streamed_for(2) == pytest.approx(own + 8 * (1 - 0.75 ** 2) * 3 * h * f)
    assert decoder.streamed_for(512) == pytest.approx(decoder.streamed)

    # the block's tokens together: a decode step of 4 sequences in 2 batches reads what 8 tokens touch
    shape = Policy(weights=(0, 0, 100), gpu_batch_size=4, num_gpu_batches=2)
    model = BlockModel(spec, shape, 64, 8, PRESETS["t4"], 2)
    decode = model.busy("decoder", Step("decode", 1, 64, 7))["disk"].coef["w_disk"]
    prefill = model.busy("decoder", Step("prefill", 64, 64, 1))["disk"].coef["w_disk"]
    assert decode / prefill == pytest.approx(decoder.streamed_for(8) / decoder.streamed)
