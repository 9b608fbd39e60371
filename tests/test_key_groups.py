"""Keys quantized per channel (KIVI, `Policy(cache_keys="channel")`): the codec's error bounds, the
cache's hand-over of the newest keys from full precision to encoded groups, and the same outputs
on every placement."""
import pytest
import tiny_models
import torch
from test_compression import POLICIES as COMPRESSED_PLACEMENTS

from flexgen_core import LLM, Policy, SamplingParams
from flexgen_core.memory import key_groups
from flexgen_core.memory.compression import QuantConfig, dequantize, quantize
from flexgen_core.memory.kv_cache import BlockCache, prompt_stored_and_seen, stored_and_seen
from flexgen_core.memory.tiers import TierSet

G = 8  # tokens per key group in the model tests: short prompts still fill several
MIX = (30, 50, 20)


def _keys(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_each_channel_is_quantized_within_its_own_range():
    cfg = QuantConfig(4, 32)
    x = _keys(4, 64, 16)
    x[..., 3] *= 50  # an outlier channel, as keys have
    x[..., 5] = 2.5  # a constant one
    got = key_groups.decode(key_groups.encode(x, cfg), 16, cfg, torch.float32)
    groups = x.reshape(4, 2, 32, 16)
    low, width = groups.amin(2), groups.amax(2) - groups.amin(2)
    bound = 0.5 * (width + low.abs() * 1e-3) / cfg.levels * 1.001 + 1e-6  # half a step, fp16 range rounding
    assert ((got - x).abs().reshape(4, 2, 32, 16) <= bound[:, :, None]).all()
    assert torch.equal(got[..., 5], x[..., 5])  # a constant group decodes exactly
    # grouped per token instead, the outlier channel widens every token's range
    per_token = dequantize(quantize(x, QuantConfig(4, 16)), 16, QuantConfig(4, 16), torch.float32)
    others = [c for c in range(16) if c != 3]
    assert (got - x)[..., others].norm() < (per_token - x)[..., others].norm() / 3


def test_a_groups_bytes_fill_its_slots():
    assert key_groups.slot_bytes(64, QuantConfig(4, 64)) == QuantConfig(4, 64).packed_bytes(64)  # as per token
    assert key_groups.slot_bytes(72, QuantConfig(4, 64)) == 41  # 72 channels x 36 bytes over 64 slots, rounded up
    x = _keys(3, 128, 72)
    cfg = QuantConfig(8, 64)
    stored = key_groups.encode(x, cfg)
    assert stored.shape == (3, 128, 77) and stored.dtype == torch.uint8  # 8 bits: 72 x 68 / 64 = 76.5, rounded up
    assert torch.allclose(key_groups.decode(stored, 72, cfg, torch.float32), x, atol=0.05)
    with pytest.raises(ValueError, match="whole groups of 64"):
        key_groups.encode(x[:, :100], cfg)


@pytest.mark.parametrize("percents", [(100, 0, 0), (0, 0, 100), MIX], ids=["device", "disk", "mix"])
@pytest.mark.parametrize("prompt", [5, 11, 16])
def test_the_newest_keys_stay_exact_until_the_next_group_starts(tmp_path, percents, prompt):
    """Decode steps across two group boundaries: groups end where the prompt ends; every load gives
    the groups before the newest as the codec encodes them and the newest group's keys exactly as
    they came, on every tier."""
    quant, d, kv, b, steps = QuantConfig(4, G), 16, 2, 5, 19
    tiers = TierSet(torch.device("cpu"), str(tmp_path))
    cache = BlockCache(tiers, 1, [(b, prompt + steps)], kv, d, torch.float32, percents, 0.0, quant,
                       channel_keys=True)
    keys, values = _keys(b, kv, prompt + steps, d), _keys(b, kv, prompt + steps, d, seed=1)
    (stored_k, _), (stored_v, _) = prompt_stored_and_seen(keys[:, :, :prompt], values[:, :, :prompt], quant, True)
    cache.store_prefill(0, 0, stored_k, stored_v)
    rows = keys.reshape(b * kv, prompt + steps, d)
    v = -prompt % G
    first = rows[:, :1].expand(-1, v, -1)  # the slots before column 0 hold the first key
    for t in range(prompt, prompt + steps):
        segments = cache.load(0, 0, t)
        got = torch.cat([seg.keys[:, :t] for seg in segments])
        newest = (t + v - 1) // G * G - v  # the newest group's first column (negative: it holds the first slots)
        if newest > 0:
            slots = torch.cat([first, rows[:, :newest]], dim=1)
            encoded = key_groups.decode(key_groups.encode(slots, quant), d, quant, torch.float32)[:, v:]
            assert torch.equal(got[:, :newest], encoded)
        assert torch.equal(got[:, max(newest, 0):], rows[:, max(newest, 0):t])
        assert t - max(newest, 0) <= G
        new_values = stored_and_seen(values.reshape(b * kv, -1, d)[:, t], quant)[0]
        for seg in segments:
            cache.store_token(0, 0, seg.index, seg.rows, rows[:, t], new_values, t)
    cache.free()
    tiers.close()


def test_a_rows_groups_do_not_depend_on_its_padding():
    """Groups end where the prompt ends and padding is encoded as the row's first key: a row sees the
    same keys alone and left-padded in a block, whatever its pads computed."""
    quant = QuantConfig(4, G)
    keys = _keys(1, 2, 13, 4)
    (_, alone), _ = prompt_stored_and_seen(keys, keys, quant, True)
    for pad in (1, 3, 8):
        padded = torch.cat([torch.full((1, 2, pad, 4), 1e4), keys], dim=2)  # whatever the pad token computed
        (_, seen), _ = prompt_stored_and_seen(padded, padded, quant, True, pads=[pad])
        assert torch.equal(seen[:, :, pad:], alone)


def test_an_unknown_key_scheme_is_named():
    with pytest.raises(ValueError, match="cache_keys must be one of token, channel"):
        Policy(cache_keys="row")
    assert "keys per channel" in Policy(compress_cache=True, cache_keys="channel").describe()


CHANNEL = dict(compress_cache=True, cache_keys="channel", compression_group_size=G)
# test_compression's placements (weights and cache on each tier, CPU attention, a 1x4 block), keys per channel
PLACEMENTS = {name: policy.with_(**CHANNEL) for name, policy in COMPRESSED_PLACEMENTS.items()}
PROMPTS = [[5, 17, 33, 40, 41, 42] * 3, [7, 8, 9], [100, 101, 102, 103, 104, 105, 106, 107, 108] * 2, [250, 251]]
PARAMS = SamplingParams(max_new_tokens=12, ignore_eos=True)  # past two group boundaries of every row


def _generate_and_score(path, policy, tmp_path):
    with LLM.from_pretrained(path, policy=policy, offload_dir=str(tmp_path)) as llm:
        generated = llm.generate(PROMPTS, PARAMS)
        scored = llm.score([(p[:-1], p[-1:] + [3, 4]) for p in PROMPTS])
        return generated, scored


@pytest.fixture(scope="module")
def on_device(tiny_llama_dir, tmp_path_factory):
    return {sparse: _generate_and_score(tiny_llama_dir, PLACEMENTS["device"].with_(attn_sparsity=sparse),
                                        tmp_path_factory.mktemp("dev")) for sparse in (1.0, 0.3)}


@pytest.mark.parametrize("name", [n for n in PLACEMENTS if n != "device"])
@pytest.mark.parametrize("sparsity", [1.0, 0.3], ids=["dense", "sparse"])
def test_keys_per_channel_give_the_same_outputs_on_every_placement(tiny_llama_dir, on_device, name, sparsity,
                                                                  tmp_path):
    policy = PLACEMENTS[name].with_(attn_sparsity=sparsity)
    if sparsity < 1 and policy.gpu_batch_size == 1:
        pytest.skip("top-k selection is discontinuous: padding moves scores by ~1e-7 and can flip a near-tie")
    (want_gen, want_scores) = on_device[sparsity]
    got_gen, got_scores = _generate_and_score(tiny_llama_dir, policy, tmp_path)
    # other padding changes fp32 sums at the last bit, which a 4-bit code on a rounding boundary can
    # carry to 1e-4 (a row's groups themselves do not move: else log-probs would differ by tenths)
    tol = 1e-3 if policy.gpu_batch_size == 1 else 1e-5
    for want, got in zip(want_gen, got_gen):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
        assert got.outputs[0].logprobs == pytest.approx(want.outputs[0].logprobs, abs=tol)
    for want, got in zip(want_scores, got_scores):
        assert got.logprobs == pytest.approx(want.logprobs, abs=tol)


def test_8_bit_keys_per_channel_stay_within_rounding_of_fp32(tiny_llama_dir, tmp_path):
    """A group read back wrongly (a slot mistaken, a key of the group filling lost at the hand-over)
    moves log-probs by whole units; 8-bit codes by hundredths, keeping every greedy token."""
    outs = {}
    for name, policy in {"fp32": Policy(weights=MIX, cache=MIX),
                         "8-bit": Policy(weights=MIX, cache=MIX, compression_bits=8, **CHANNEL)}.items():
        outs[name] = _generate_and_score(tiny_llama_dir, policy, tmp_path / name)[0]
    for want, got in zip(outs["fp32"], outs["8-bit"]):
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
        assert got.outputs[0].logprobs == pytest.approx(want.outputs[0].logprobs, abs=0.05)


def test_sliding_layers_keep_per_token_keys_and_the_same_outputs_on_every_tier(tmp_path):
    """A window's ring reuses its slots token by token, so its layers keep per-token keys while the
    global layer groups them per channel; the outputs still do not depend on the tier."""
    path = tiny_models.tiny_llama(str(tmp_path / "m"), seed=7, norms=True, model_type="qwen3",
                                  use_sliding_window=True, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    results = []
    for policy in (Policy(**CHANNEL), Policy(weights=MIX, cache=(0, 0, 100), **CHANNEL),
                   Policy(weights=MIX, cache=MIX, activations=MIX, cpu_attention=0.5, **CHANNEL)):
        results.append(_generate_and_score(path, policy, tmp_path / "off")[0])
    for other in results[1:]:
        for want, got in zip(results[0], other):
            assert got.outputs[0].token_ids == want.outputs[0].token_ids
            assert got.outputs[0].logprobs == pytest.approx(want.outputs[0].logprobs, abs=1e-5)


def test_the_cost_model_counts_the_group_filling_in_full_precision():
    from flexgen_core import ModelSpec
    from flexgen_core.planning.cost_model import BlockModel
    from flexgen_core.planning.hardware import load_profile

    spec, hw = ModelSpec.from_name("opt-30b"), load_profile("t4")
    models = {keys: BlockModel(spec, Policy(compress_cache=True, cache_keys=keys, gpu_batch_size=32), 512, 32, hw, 2)
              for keys in ("token", "channel")}
    extra = models["channel"].cache_bytes(544) - models["token"].cache_bytes(544)
    assert extra == 32 * spec.num_kv_heads * spec.head_dim * 64 * 2  # rows x channels x 64 tokens x fp16
    # bytes per value of the encoded groups are the per-token scheme's (64 tokens or 64 channels a group)
    assert key_groups.slot_bytes(spec.head_dim, QuantConfig(4, 64)) == QuantConfig(4, 64).packed_bytes(spec.head_dim)
