import pytest

from flexgen_core import ModelSpec, Policy
from flexgen_core.planning.cost_model import (
    BlockModel,
    Lin,
    compressed_bytes_per_element,
    estimate,
    fractions,
    token_steps,
)
from flexgen_core.planning.hardware import load_profile
from flexgen_core.planning.sizes import KINDS, model_sizes

OPT30 = ModelSpec.from_name("opt-30b")
T4 = load_profile("t4")
PAPER_30B = Policy(weights=(20, 80, 0), cache=(0, 100, 0), activations=(0, 100, 0), gpu_batch_size=48,
                   num_gpu_batches=3, cpu_attention=True)


def offloaded(weights, **kw):
    base = dict(cache=(0, 100, 0), activations=(0, 100, 0), gpu_batch_size=16, num_gpu_batches=2)
    return Policy(weights=weights, **{**base, **kw})


def stored_numels(spec):
    return tuple(model_sizes(spec).layers[k].stored for k in KINDS)


def layer_numels(spec):
    return tuple(model_sizes(spec).layers[k].streamed for k in KINDS)


def test_lin_is_affine():
    f = Lin(1.0, {"w_gpu": 2.0}) + Lin.var("w_gpu", "c_cpu", scale=3.0) * 2 + 0.5
    assert f.value({"w_gpu": 0.5, "c_cpu": 1.0}) == pytest.approx(1.5 + 0.5 * 8 + 6)


def test_fractions_follow_the_percentages():
    x = fractions(PAPER_30B)
    assert x["w_gpu"] == pytest.approx(0.2) and x["w_cpu"] == pytest.approx(0.8) and x["c_cpu"] == 1.0
    assert sum(x.values()) == pytest.approx(3.0)


def test_layer_sizes_match_the_published_shapes():
    embed, decoder, head = stored_numels(OPT30)
    h, f = 7168, 4 * 7168
    assert decoder == 4 * h * h + 4 * h + 2 * h * f + f + h + 2 * 2 * h  # q k v o, fc1 fc2, two LayerNorms
    assert embed == (2048 + 2) * 7168  # learned positions; the tied token table lives in the head
    assert head >= 50272 * 7168
    total = embed + 48 * decoder + head
    assert 29e9 < total < 31e9


def test_embedding_tables_are_looked_up_not_streamed():
    assert layer_numels(OPT30)[0] == 0
    assert layer_numels(OPT30)[1:] == stored_numels(OPT30)[1:]
    llama = ModelSpec.from_name("smollm2-135m")
    assert layer_numels(llama)[0] == 0
    assert stored_numels(llama)[0] == 0  # tied: stored once, in the head


def test_token_steps_cover_every_decode_step():
    steps = token_steps(512, 32)
    assert steps[0].phase == "prefill" and steps[0].count == 1 and steps[0].context == 512
    decode = steps[1:]
    assert sum(s.count for s in decode) == 31 and len(decode) <= 16
    mean = sum(s.count * s.context for s in decode) / 31
    assert mean == pytest.approx(512 + 16)  # contexts 513..543
    assert [s.phase for s in token_steps(8, 1)] == ["prefill"]
    assert [s.count for s in token_steps(8, 4)] == [1, 1, 1, 1]


def test_throughput_is_block_tokens_over_time():
    est = estimate(OPT30, PAPER_30B, 512, 32, "t4")
    assert est.throughput == pytest.approx(144 * 32 / (est.prefill_time + est.decode_time))
    assert est.io_bound_throughput >= est.throughput
    assert est.bottleneck("decode") in est.busy["decode"]


def test_paper_policies_are_predicted_near_the_papers_measurements():
    """The model against the paper's T4 numbers (512 + 32): same order, within 2x."""
    assert 7.32 / 2 < estimate(OPT30, PAPER_30B, 512, 32, T4).throughput < 7.32 * 2
    all_gpu = Policy(gpu_batch_size=2, overlap=False)
    assert 25.26 / 2 < estimate(ModelSpec.from_name("opt-6.7b"), all_gpu, 512, 32, T4).throughput < 25.26 * 2


def test_streaming_weights_from_slower_tiers_is_never_faster():
    speeds = [estimate(OPT30, offloaded(w), 512, 32, T4).throughput
              for w in ((100, 0, 0), (50, 50, 0), (0, 100, 0), (0, 50, 50), (0, 0, 100))]
    assert speeds == sorted(speeds, reverse=True)
    assert speeds[0] > speeds[-1]


def test_memory_follows_placement():
    on_gpu = estimate(OPT30, offloaded((100, 0, 0)), 512, 32, T4).peak_memory
    on_cpu = estimate(OPT30, offloaded((0, 100, 0)), 512, 32, T4).peak_memory
    on_disk = estimate(OPT30, offloaded((0, 0, 100)), 512, 32, T4).peak_memory
    weights = sum(n * c for n, c in zip(stored_numels(OPT30), (1, 48, 1))) * 2
    assert on_gpu["gpu"] - on_cpu["gpu"] == pytest.approx(weights, rel=0.1)  # less two streaming buffers
    assert on_cpu["cpu"] - on_gpu["cpu"] == pytest.approx(weights)
    assert on_disk["disk"] == pytest.approx(weights)
    assert on_gpu["disk"] == 0


def test_all_gpu_policy_needs_no_cpu_or_disk():
    spec = ModelSpec.from_name("opt-1.3b")
    est = estimate(spec, Policy(gpu_batch_size=4), 128, 16, T4)
    assert est.peak_memory["cpu"] == 0 and est.peak_memory["disk"] == 0
    assert est.busy["decode"]["h2d"] == 0


def test_cache_memory_grows_with_the_block():
    small = estimate(OPT30, offloaded((0, 100, 0), num_gpu_batches=1), 512, 32, T4).peak_memory["cpu"]
    large = estimate(OPT30, offloaded((0, 100, 0), num_gpu_batches=4), 512, 32, T4).peak_memory["cpu"]
    per_batch = 2 * 16 * 7168 * (512 + 32) * 2 * 48  # K and V of 16 sequences, all layers
    assert large - small == pytest.approx(3 * per_batch, rel=0.01)


def test_sliding_layers_count_only_their_window_of_cache():
    """Half the layers slide within 128 positions: a 2048-token prompt's cache on the CPU costs the
    global layers' full length and the sliding layers' window; a prompt within the window costs all."""
    from dataclasses import replace

    base = ModelSpec.from_name("llama-2-7b-hf")
    sliding = replace(base, sliding_window=128, sliding_layers=tuple(range(0, 32, 2)))
    policy = offloaded((100, 0, 0), num_gpu_batches=1)

    def cpu_cache(spec, prompt):
        return estimate(spec, policy, prompt, 32, T4).peak_memory["cpu"]

    per_position = 2 * 16 * 4096 * 2  # K and V of 16 sequences, one layer, fp16
    assert cpu_cache(base, 2048) - cpu_cache(sliding, 2048) == pytest.approx(16 * (2048 + 32 - 128) * per_position)
    assert cpu_cache(base, 64) == cpu_cache(sliding, 64)
    # and less of it crosses the link each decode step
    assert estimate(sliding, policy, 2048, 32, T4).busy["decode"]["h2d"] < \
        estimate(base, policy, 2048, 32, T4).busy["decode"]["h2d"]


def test_more_gpu_batches_amortise_streamed_weights():
    speeds = [estimate(OPT30, offloaded((0, 100, 0), num_gpu_batches=k, gpu_batch_size=8), 512, 32, T4).throughput
              for k in (1, 2, 4)]
    assert speeds[0] < speeds[1] < speeds[2]


def test_overlap_is_never_slower():
    for policy in (PAPER_30B, offloaded((0, 50, 50)), offloaded((30, 70, 0), cpu_attention=True)):
        on = estimate(OPT30, policy, 512, 32, T4)
        off = estimate(OPT30, policy.with_(overlap=False), 512, 32, T4)
        assert on.throughput >= off.throughput
        assert off.total_time == pytest.approx(sum(sum(b.values()) for b in off.busy.values()))


def test_cpu_attention_moves_cache_traffic_off_the_link():
    plain = estimate(OPT30, offloaded((100, 0, 0)), 512, 32, T4)  # weights resident: h2d carries cache only
    cpu_attn = estimate(OPT30, offloaded((100, 0, 0), cpu_attention=True), 512, 32, T4)
    assert cpu_attn.busy["decode"]["h2d"] < plain.busy["decode"]["h2d"] / 2
    assert cpu_attn.busy["decode"]["cpu"] > 0 == plain.busy["decode"]["cpu"]


def test_a_cpu_attention_share_splits_the_cache_between_the_cpu_and_the_link():
    """Share s of the off-device cache is attended on the CPU, the rest crosses the link: each
    resource's decode time is the straight line between the two pure choices."""
    ends = [estimate(OPT30, offloaded((100, 0, 0), cpu_attention=s), 512, 32, T4).busy["decode"] for s in (0, 1)]
    for share in (0.25, 0.5):
        mid = estimate(OPT30, offloaded((100, 0, 0), cpu_attention=share), 512, 32, T4).busy["decode"]
        for r in ("h2d", "cpu"):
            assert mid[r] == pytest.approx((1 - share) * ends[0][r] + share * ends[1][r], rel=1e-6)


def test_writes_in_flight_count_in_gpu_prefill_memory_only_on_a_gpu():
    """With overlap, a GPU's prefill memory holds WRITES_IN_FLIGHT pending writes beyond what a CPU
    device holds (the other overlap buffers are the same on both)."""
    from flexgen_core.memory.io_queue import WRITES_IN_FLIGHT

    policy = offloaded((0, 100, 0), gpu_batch_size=8, num_gpu_batches=1)
    x = fractions(policy)

    def overlap_extra(hw):
        on, off = (BlockModel(OPT30, p, 512, 32, hw, 2) for p in (policy, policy.with_(overlap=False)))
        return on.memory_terms(False)["gpu"][0].value(x) - off.memory_terms(False)["gpu"][0].value(x)

    model = BlockModel(OPT30, policy, 512, 32, T4, 2)
    held = WRITES_IN_FLIGHT * max(model.cache_bytes(512, 2), model.hidden_bytes(512))
    assert held > 0
    assert overlap_extra(T4) == pytest.approx(overlap_extra(load_profile("cpu")) + held)


def test_compression_shrinks_weights_on_every_tier():
    assert compressed_bytes_per_element(4, 64) == pytest.approx(0.5625)
    plain = estimate(OPT30, offloaded((0, 0, 100)), 512, 32, T4).peak_memory["disk"]
    packed = estimate(OPT30, offloaded((0, 0, 100), compress_weight=True), 512, 32, T4).peak_memory["disk"]
    assert packed == pytest.approx(plain * 0.5625 / 2)


def test_cpu_device_shares_one_cpu_between_compute_and_copies():
    spec = ModelSpec.from_name("smollm2-135m")
    est = estimate(spec, Policy(weights=(50, 50, 0), gpu_batch_size=4), 64, 8, "cpu")
    assert est.dtype_bytes == 4  # fp32 on a CPU
    assert set(est.busy["decode"]) == {"cpu", "disk"}


def _decode_matmuls(model: BlockModel) -> float:
    """Device seconds of a decoder layer's first decode step, less its attention."""
    step = next(s for s in model.steps if s.phase == "decode")
    return model.busy("decoder", step)["device"].const - model._attention(step)["device"].const


def test_a_cpu_decode_step_reads_a_layers_weights_from_memory_once_for_all_batches():
    """On a CPU the runtime runs a decode step's decoder layer once over the block's rows, so 32x8 decodes
    like 256x1 (a mixture's experts read once, not once per batch)."""
    spec, cpu = ModelSpec.from_name("olmoe-1b-7b"), load_profile("cpu")
    resident = dict(weights=(100, 0, 0), cache=(100, 0, 0), activations=(100, 0, 0))
    one, many = Policy(gpu_batch_size=256, **resident), Policy(gpu_batch_size=32, num_gpu_batches=8, **resident)
    merged = BlockModel(spec, many, 64, 8, cpu, 2)
    assert merged.merged_decode and not BlockModel(spec, many, 64, 8, load_profile("h100"), 2).merged_decode
    assert _decode_matmuls(merged) == pytest.approx(_decode_matmuls(BlockModel(spec, one, 64, 8, cpu, 2)))
    merged.merged_decode = False  # the GPU's schedule: each batch of 32 reads nearly every expert again
    assert _decode_matmuls(merged) > 1.2 * _decode_matmuls(BlockModel(spec, one, 64, 8, cpu, 2))


def test_sequence_longer_than_the_model_is_refused():
    with pytest.raises(ValueError, match="max_seq_len"):
        estimate(OPT30, PAPER_30B, 2040, 32, T4)


def test_block_model_memory_terms_are_what_estimate_reports():
    model = BlockModel(OPT30, PAPER_30B, 512, 32, T4, 2)
    x = fractions(PAPER_30B)
    peak = {t: max(lin.value(x) for lin in lins) for t, lins in model.memory_terms(False).items()}
    assert peak == pytest.approx(model.evaluate(PAPER_30B).peak_memory)


def test_cpu_attention_is_charged_at_the_kernels_measured_rate():
    """A measured CPU attention rate (cache bytes per second through the runtime's own kernel) below
    the memory bandwidth makes CPU-attention decode slower by that much; without one, memory
    bandwidth bounds it as before. Per-layer-call host time is charged per GPU batch."""
    from dataclasses import replace

    base = estimate(OPT30, PAPER_30B, 512, 32, T4)
    slow = estimate(OPT30, PAPER_30B, 512, 32, replace(T4, cpu_attn_bw=T4.cpu_mem_bw / 10))
    assert slow.decode_time > 2 * base.decode_time
    assert slow.prefill_time == pytest.approx(base.prefill_time)
    gpu_attention = PAPER_30B.with_(cpu_attention=False)
    assert estimate(OPT30, gpu_attention, 512, 32, replace(T4, cpu_attn_bw=T4.cpu_mem_bw / 10)).decode_time \
        == pytest.approx(estimate(OPT30, gpu_attention, 512, 32, T4).decode_time)

    # with overlap off every resource's time adds up, so the host's share shows whole
    many_small = Policy(weights=(100, 0, 0), cache=(100, 0, 0), gpu_batch_size=1, num_gpu_batches=8, overlap=False)
    calls = replace(T4, layer_call_s=1e-3)
    extra = estimate(OPT30, many_small, 512, 32, calls).total_time - estimate(OPT30, many_small, 512, 32, T4).total_time
    layer_calls = 32 * 50 * 8  # (1 prefill + 31 decode steps) x (embedding, 48 decoders, head) x 8 batches
    assert extra == pytest.approx(layer_calls * 1e-3)


def test_dequantization_is_charged_at_the_measured_rate():
    """With a measured dequantization rate, every 4-bit value the device unpacks costs 1 / rate:
    with overlap off, the decode time grows by exactly the weights unpacked each block step and the
    cache values unpacked each decode step. Uncompressed policies do not change."""
    from dataclasses import replace

    fast, slow = replace(T4, dequant_rate=1e12), replace(T4, dequant_rate=1e10)
    both = Policy(weights=(50, 50, 0), cache=(0, 100, 0), gpu_batch_size=8, num_gpu_batches=2, overlap=False,
                  compress_weight=True, compress_cache=True)
    s, n = 512, 32
    extra = estimate(OPT30, both, s, n, slow).decode_time - estimate(OPT30, both, s, n, fast).decode_time
    weights = sum(layer_numels(OPT30)[i] * c for i, c in ((0, 1), (1, OPT30.num_layers), (2, 1)))
    kv = 2 * OPT30.num_kv_heads * OPT30.head_dim * OPT30.num_layers * 8 * 2  # per position, whole block
    cache = sum(kv * (s + t) for t in range(1, n))  # decode step t attends s + t positions
    values = weights * (n - 1) + cache
    assert extra == pytest.approx(values * (1 / 1e10 - 1 / 1e12), rel=1e-6)
    plain = both.with_(compress_weight=False, compress_cache=False)
    assert estimate(OPT30, plain, s, n, slow).total_time == pytest.approx(estimate(OPT30, plain, s, n, fast).total_time)


def test_compressed_policies_count_what_4_bit_work_holds_on_the_device():
    """On the device, a compressed policy also holds one (de)quantization block's fp32 temporaries;
    a compressed cache adds the prompt's keys and values as stored (prefill attends to those) and the
    dequantised cache of the batch being attended and the one prefetched (decode)."""
    from flexgen_core.memory.compression import scratch_bytes

    shape = dict(weights=(100, 0, 0), cache=(0, 100, 0), activations=(100, 0, 0), gpu_batch_size=8, num_gpu_batches=2)
    s, n, dt = 512, 32, 2

    def gpu_terms(**kw):
        p = Policy(**shape, **kw)
        x = fractions(p)
        return [lin.value(x) for lin in BlockModel(OPT30, p, s, n, T4, dt).memory_terms(True)["gpu"]]

    plain, weights_c, cache_c = gpu_terms(), gpu_terms(compress_weight=True), gpu_terms(compress_cache=True, cache_keys="token")
    # (per-token keys: the full-precision group of keys per channel is counted in test_key_groups)
    scratch = scratch_bytes("cuda", 1e12)
    assert scratch == (1 << 24) * 9 and scratch_bytes("cuda", 1000) == 9000  # a block, or less
    from flexgen_core.planning.cost_model import compressed_bytes_per_element
    comp = compressed_bytes_per_element(4, 64)
    stored = stored_numels(OPT30)
    total = stored[0] + stored[1] * OPT30.num_layers + stored[2]
    two_layers = 2 * layer_numels(OPT30)[1] * dt  # the decoder computing and the next, dequantised
    for phase in (0, 1):
        assert weights_c[phase] == pytest.approx(plain[phase] - total * (dt - comp) + two_layers + scratch)
    b, kv, d = 8, OPT30.num_kv_heads, OPT30.head_dim
    stored_prompt = 2 * b * d * s * kv * dt
    assert cache_c[0] == pytest.approx(plain[0] + scratch + stored_prompt)
    per_batch = 2 * b * kv * d * (s + n)  # values of one batch's cache, one layer
    loaded = 2 * per_batch * (compressed_bytes_per_element(4, 64) - dt)  # the two buffered batches, as stored
    assert cache_c[1] == pytest.approx(plain[1] + loaded + scratch + 2 * per_batch * dt)
