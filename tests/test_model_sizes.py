"""Sizes come from a family's own layers: a made-up family with odd shapes, written here and nowhere
else, gets the right bytes, FLOPs and KV bytes from the cost model, the memory accounting and the
planner."""
import types

import pytest

from flexgen_core import ModelSpec, Policy
from flexgen_core.model.layers import WeightSpec, Widths
from flexgen_core.model.spec import FAMILIES
from flexgen_core.planning.cost_model import BlockModel
from flexgen_core.planning.hardware import load_profile
from flexgen_core.planning.planner import plan_policy
from flexgen_core.planning.sizes import model_sizes

H, HEAD_DIM, HEADS, KV_HEADS, FFN, VOCAB, LAYERS = 96, 24, 4, 1, 200, 500, 3


def _oddball() -> types.ModuleType:
    """Fused q/k/v, four norms per layer (Gemma 2's layout), an MLP that keeps five inner-width
    tensors, an untied head with a bias."""
    family = types.ModuleType("oddball")
    family.MODEL_TYPES, family.ARCHITECTURES = ("oddball",), ("OddballForCausalLM",)

    class Embedding:
        kind, name = "embed", "embed"

        def weight_specs(self):
            return [WeightSpec("embed.weight", (VOCAB, H), lookup=True)]

    class Decoder:
        kind = "decoder"

        def __init__(self, i):
            self.name = f"layer{i}"

        def weight_specs(self):
            p = self.name + "."
            qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM
            norms = [WeightSpec(p + n, (H,), "ones") for n in ("pre_attn", "post_attn", "pre_mlp", "post_mlp")]
            return norms + [WeightSpec(p + "qkv.weight", (qkv, H)), WeightSpec(p + "o.weight", (H, HEADS * HEAD_DIM)),
                            WeightSpec(p + "up.weight", (2 * FFN, H)), WeightSpec(p + "down.weight", (H, FFN)),
                            WeightSpec(p + "down.bias", (H,), "zeros")]

    class Head:
        kind, name = "head", "head"

        def weight_specs(self):
            return [WeightSpec("norm.weight", (H,), "ones"), WeightSpec("lm_head.weight", (VOCAB, H)),
                    WeightSpec("lm_head.bias", (VOCAB,), "zeros")]

    family.build_layers = lambda spec: [Embedding()] + [Decoder(i) for i in range(spec.num_layers)] + [Head()]
    family.widths = lambda spec: Widths(kv=spec.num_kv_heads * spec.head_dim, mlp=5 * spec.ffn_size)
    return family


@pytest.fixture
def spec(monkeypatch):
    monkeypatch.setitem(FAMILIES, "oddball", _oddball())
    return ModelSpec(family="oddball", vocab_size=VOCAB, hidden_size=H, num_layers=LAYERS, num_heads=HEADS,
                     num_kv_heads=KV_HEADS, ffn_size=FFN, max_seq_len=512, tie_embeddings=False,
                     head_dim_override=HEAD_DIM, name="oddball")


def test_bytes_flops_and_kv_come_from_the_familys_own_layers(spec):
    qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    decoder_matrices = qkv * H + H * HEADS * HEAD_DIM + 2 * FFN * H + H * FFN
    decoder = decoder_matrices + 4 * H + H
    sizes = model_sizes(spec)
    assert sizes.count == {"embed": 1, "decoder": LAYERS, "head": 1}
    assert sizes.layers["decoder"].stored == sizes.layers["decoder"].streamed == decoder
    assert sizes.layers["decoder"].matmul == decoder_matrices
    assert sizes.layers["embed"].streamed == 0 and sizes.layers["embed"].stored == VOCAB * H  # looked up by row
    assert sizes.layers["head"].matmul == VOCAB * H
    assert sizes.weight_values() == VOCAB * H + LAYERS * decoder + H + VOCAB * H + VOCAB
    assert sizes.flops_per_token() == 2 * (LAYERS * decoder_matrices + VOCAB * H)
    assert sizes.kv_bytes_per_token(2) == 2 * LAYERS * KV_HEADS * HEAD_DIM * 2


def test_the_cost_model_and_the_planner_use_them(spec, monkeypatch):
    hw = load_profile("cpu")
    sizes = model_sizes(spec)
    model = BlockModel(spec, Policy(gpu_batch_size=4), 64, 8, hw, 4)
    assert model.total_weight_bytes == sizes.weight_values() * 4
    assert model.cache_bytes(10) == 2 * 4 * KV_HEADS * HEAD_DIM * 10 * 4
    # a prefill big enough to be bound by FLOPs: the decoder's device time is its matrices' FLOPs
    big = BlockModel(spec, Policy(gpu_batch_size=64), 256, 2, hw, 4)
    prefill = big.steps[0]
    assert big._gemm("decoder", prefill.new_tokens, True) == pytest.approx(
        2 * 64 * 256 * sizes.layers["decoder"].matmul / hw.gemm_flops_prefill)
    # the family's widths hook sets the working memory: five inner-width tensors hold more than two
    narrow = _oddball()
    narrow.widths = lambda spec: Widths(kv=spec.num_kv_heads * spec.head_dim, mlp=2 * spec.ffn_size)
    monkeypatch.setitem(FAMILIES, "oddball-narrow", narrow)
    other = ModelSpec(**{**spec.to_dict(), "family": "oddball-narrow"})
    peaks = [BlockModel(x, Policy(gpu_batch_size=4), 32, 8, hw, 4).evaluate(Policy(gpu_batch_size=4))
             .peak_memory["gpu"] for x in (spec, other)]
    assert peaks[0] > peaks[1]
    plan = plan_policy(spec, 64, 8, {"gpu": "1GiB", "cpu": "1GiB", "disk": "1GiB"}, hw)
    assert plan.policy.weights == (100.0, 0.0, 0.0)
    assert plan.peak_memory["gpu"] >= sizes.weight_values() * 4
