"""Build tiny Llama GGUF files (random weights, byte-level BPE vocab) for offline tests."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
ROPE_BASE = 12345.0
CONTEXT = 128


def _byte_symbols() -> list[str]:
    """The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the rest are
    shifted past 255 so that every byte has a visible, non-space symbol."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, shift = {}, 0
    for b in range(256):
        if b in visible:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + shift)
            shift += 1
    return [symbols[b] for b in range(256)]


def tiny_vocab() -> list[str]:
    merged = ["".join(m.split(" ")) for m in MERGES]
    return SPECIAL_TOKENS + _byte_symbols() + merged


def write_tiny_llama_gguf(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A valid llama GGUF: 4 heads of 8, 2 KV heads, untied output, some Q8_0 tensors."""
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType, quants

    rng = np.random.default_rng(seed)
    tokens = tiny_vocab()
    n_vocab, n_head, n_kv, head_dim, ff = len(tokens), 4, 2, hidden // 4, 2 * hidden

    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    types = [TokenType.CONTROL] * len(SPECIAL_TOKENS) + [TokenType.NORMAL] * (n_vocab - len(SPECIAL_TOKENS))
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)

    def dense(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def q8(name, array):  # exercise dequantisation, as in real checkpoints
        w.add_tensor(name, quants.quantize(array, GGMLQuantizationType.Q8_0), raw_dtype=GGMLQuantizationType.Q8_0)

    w.add_tensor("token_embd.weight", dense(n_vocab, hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + dense(hidden, scale=0.05))
        w.add_tensor(f"blk.{i}.attn_q.weight", dense(n_head * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", dense(n_kv * head_dim, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", dense(n_kv * head_dim, hidden))
        q8(f"blk.{i}.attn_output.weight", dense(hidden, n_head * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + dense(hidden, scale=0.05))
        q8(f"blk.{i}.ffn_gate.weight", dense(ff, hidden))
        q8(f"blk.{i}.ffn_up.weight", dense(ff, hidden))
        q8(f"blk.{i}.ffn_down.weight", dense(hidden, ff))
    w.add_tensor("output_norm.weight", 1 + dense(hidden, scale=0.05))
    w.add_tensor("output.weight", dense(n_vocab, hidden))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wheel(path: Path, member: str, payload: Path | bytes) -> Path:
    """A minimal wheel-shaped zip holding `payload` at `member`."""
    data = payload if isinstance(payload, bytes) else Path(payload).read_bytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
        zf.writestr("tiny-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny\nVersion: 0.1\n")
    return path
