"""Tiny random OPT and Llama-family checkpoints (and a tokenizer), built offline for tests."""
from __future__ import annotations

import os

import torch

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Question: what is two plus two? Answer: four.",
    "Once upon a time there was a small model that streamed its weights from disk.",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9",
    "the quick brown fox jumps over the lazy dog\nnew lines matter\n\n",
]
VOCAB_SIZE = 320


def build_tokenizer(out_dir: str):
    """A byte-level BPE tokenizer trained on a few sentences: any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=256)
    fast.save_pretrained(out_dir)
    return fast


def _save(model, out_dir: str, tokenizer: bool):
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer:
        build_tokenizer(out_dir)
    return out_dir


def tiny_opt(out_dir: str, seed: int = 0, tokenizer: bool = True, **overrides) -> str:
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, ffn_dim=128,
               max_position_embeddings=256, word_embed_proj_dim=64, pad_token_id=0, bos_token_id=1,
               eos_token_id=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    cfg.update(overrides)
    model = OPTForCausalLM(OPTConfig(**cfg)).eval()
    _scale_up(model)
    return _save(model, out_dir, tokenizer)


def tiny_llama(out_dir: str, seed: int = 0, tokenizer: bool = True, model_type: str = "llama", norms: bool = False,
               **overrides) -> str:
    """norms: draw the norm weights too (around 1), so a norm applied with the wrong weight changes the outputs."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256, rope_theta=10000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg.update(overrides)
    config = AutoConfig.for_model(model_type, **cfg)
    model = AutoModelForCausalLM.from_config(config).eval()
    _scale_up(model, norms)
    return _save(model, out_dir, tokenizer)


def _scale_up(model, norms: bool = False):
    """Random init at std 0.02 gives nearly uniform next-token distributions, where greedy
    ties are likely; a larger spread makes argmax comparisons meaningful."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
            elif "bias" in name:
                p.normal_(0.0, 0.05)
            elif norms and name.endswith("norm.weight"):
                p.normal_(1.0, 0.1)
