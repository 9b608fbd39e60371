"""Checkpoint formats and model variants: .bin, sharded safetensors, dummy weights, sliding window."""
import os

import hf_reference
import pytest
import tiny_models
import torch

from flexgen_core import LLM, Policy, SamplingParams

PROMPT = [5, 17, 33, 40, 41, 42, 43, 44, 45, 46, 47]


def _same_as_hf(path, hf=None, new_tokens=16):
    hf = hf or hf_reference.load(path)
    with LLM.from_pretrained(path, policy=Policy(weights=(40, 40, 20))) as llm:
        got = llm.generate([PROMPT], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))[0].outputs[0]
    tokens, logprobs = hf_reference.greedy(hf, PROMPT, new_tokens)
    assert got.token_ids == tokens
    assert got.logprobs == pytest.approx(logprobs, abs=1e-4)


def test_pytorch_bin_checkpoint(tmp_path):
    path = tiny_models.tiny_opt(str(tmp_path / "src"), tokenizer=False)
    hf = hf_reference.load(path)
    out = tmp_path / "bin"
    out.mkdir()
    torch.save(hf.state_dict(), out / "pytorch_model.bin")
    (out / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    _same_as_hf(str(out), hf)


def test_sharded_safetensors_with_index(tmp_path):
    path = tiny_models.tiny_llama(str(tmp_path / "src"), tokenizer=False)
    hf = hf_reference.load(path)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    _same_as_hf(str(tmp_path / "sharded"), hf)


def test_mistral_sliding_window_matches_hf(tmp_path):
    path = tiny_models.tiny_llama(str(tmp_path / "m"), model_type="mistral", tokenizer=False, sliding_window=6)
    _same_as_hf(path)


def test_llama3_rope_scaling_matches_hf(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    path = tiny_models.tiny_llama(str(tmp_path / "l3"), tokenizer=False, rope_scaling=scaling, rope_theta=500000.0)
    _same_as_hf(path)


def test_dummy_weights_from_builtin_config():
    with LLM.from_pretrained("facebook/opt-125m", dummy_weights=True, policy=Policy(weights=(50, 50, 0))) as llm:
        assert llm.spec.num_layers == 12 and llm.tokenizer is None
        out = llm.generate([[1, 2, 3]], SamplingParams(max_new_tokens=3, ignore_eos=True))[0].outputs[0]
        assert len(out.token_ids) == 3 and all(lp <= 0 for lp in out.logprobs)
