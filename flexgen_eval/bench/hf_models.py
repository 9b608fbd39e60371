"""HF models for the baselines: a checkpoint directory (real, or dummy built from a built-in config),
and the working memory an HF `generate` call needs beside its weights.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from flexgen_core.model.spec import BUILTIN_CONFIGS, ModelSpec
from flexgen_core.planning.sizes import model_sizes

DUMMY_DONE = ".flexgen-bench-dummy"
SHARD_BYTES = 2 << 30


def resolve_model(name_or_dir: str, dummy: bool) -> tuple[ModelSpec, str | None]:
    """(spec, checkpoint dir or None). Dummy weights of a built-in size need no directory."""
    key = str(name_or_dir).split("/")[-1].lower()
    if dummy and not os.path.isdir(name_or_dir) and key in BUILTIN_CONFIGS:
        return ModelSpec.from_name(key), None
    from flexgen_core.runtime.llm import resolve_checkpoint

    path = resolve_checkpoint(str(name_or_dir))
    return ModelSpec.from_dir(path), path


def hf_config(spec: ModelSpec, path: str | None):
    from transformers import AutoConfig

    if path is not None:
        return AutoConfig.from_pretrained(path)
    cfg = dict(BUILTIN_CONFIGS[spec.name])
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def dummy_checkpoint(spec: ModelSpec, dtype: torch.dtype, cache_dir: str) -> str:
    """A dummy HF checkpoint of a built-in size, saved once under `cache_dir` so that accelerate can
    offload it like any checkpoint; later runs reuse it. Written tensor by tensor in the hub's layout
    (the family's own checkpoint keys), in shards of SHARD_BYTES, with the tiled values our own dummy
    weights use: building the HF model and saving it holds the model twice over (transformers 5 copies
    fused experts back apart to save them), which for OLMoE-1B-7B in bf16 is more than a 24 GiB box."""
    from safetensors.torch import save_file

    from flexgen_core.memory.weight_store import fill_dummy_
    from flexgen_core.model.families import family_of

    out = os.path.join(cache_dir, f"{spec.name}-{str(dtype).split('.')[-1]}")
    if os.path.isfile(os.path.join(out, DUMMY_DONE)):
        return out
    shutil.rmtree(out, ignore_errors=True)
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    hf_config(spec, None).save_pretrained(tmp)
    specs = {w.name: w for layer in family_of(spec).build_layers(spec) for w in layer.weight_specs()}
    shard, shard_bytes, weight_map, total = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard, shard_bytes = {}, 0

    for name, w in specs.items():
        t = torch.empty(w.shape, dtype=dtype)
        if w.init == "ones":
            t.fill_(1.0)
        elif w.init == "zeros":
            t.zero_()
        else:
            fill_dummy_(t)
        shard[name] = t
        shard_bytes += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(tmp, DUMMY_DONE), "w") as f:
        json.dump({"model": spec.name, "dtype": str(dtype), "init": "tiled N(0, 0.02) (fill_dummy_), norms ones"}, f)
    os.rename(tmp, out)
    return out


def dummy_model_in_memory(spec: ModelSpec, dtype: torch.dtype):
    """The same random model without a checkpoint on disk (for sizes whose checkpoint would not fit
    the disk, e.g. OPT-30B fp16 on a 64 GiB box): parameters allocated on the CPU, filled with small
    random values (the values do not change the speed)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf_config(spec, None), dtype=dtype)
    from flexgen_core.memory.weight_store import fill_dummy_

    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            fill_dummy_(p)  # the same fast tiled values as our own dummy weights
    model.tie_weights()
    return model.eval()


def weight_bytes(spec: ModelSpec, dtype_bytes: int) -> int:
    """The checkpoint's weights, as the family's layers list them (a tied table counted once)."""
    return model_sizes(spec).weight_values() * dtype_bytes


def layer_bytes(spec: ModelSpec, dtype_bytes: int) -> int:
    return model_sizes(spec).layers["decoder"].stored * dtype_bytes


def working_bytes(spec: ModelSpec, batch: int, prompt_len: int, gen_len: int, dtype_bytes: int) -> int:
    """What HF `generate` holds beside its weights at `batch`: the KV cache for prompt + gen tokens,
    one layer's prefill activations (hidden states in and out, MLP intermediates; SDPA does not keep
    the score matrix) and the last position's logits. Checked against a measurement: SmolLM2-135M
    fp32, batch 8, 512 + 32 tokens, resident HF generate raised the process RSS by 248 MB; this
    gives 272 MB."""
    seq = prompt_len + gen_len
    kv = model_sizes(spec).kv_bytes_per_token(dtype_bytes) * batch * seq
    tokens = batch * prompt_len
    hidden = tokens * (2 * spec.hidden_size + 2 * spec.ffn_size)
    logits = 2 * batch * spec.vocab_size
    return kv + (hidden + logits) * dtype_bytes
