"""Mixtral: Llama whose MLP is a mixture of experts (block_sparse_moe): a router picks the top k of E
SwiGLU experts per token (softmax over the router's logits, renormalised over the k chosen), and
each token's output is the weighted sum of its experts'. Tokens are grouped per expert: one matmul
per expert a batch uses, not one per token. Checkpoints in the hub's layout, one tensor per expert.

This first slice streams a layer's experts with the rest of its weights; placing experts on tiers of
their own and moving only the routed ones is issue 23's next step."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from . import llama

MODEL_TYPES = ("mixtral",)
ARCHITECTURES = ("MixtralForCausalLM",)


@dataclass(frozen=True)
class MoeSettings(llama.LlamaSettings):
    num_experts: int = 8
    experts_per_token: int = 2
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum to 1


def spec_from_config(config: dict, name: str = ""):
    spec = llama.spec_from_config(config, name, family="mixtral")
    return replace(spec, arch=MoeSettings(**asdict(spec.arch), num_experts=config["num_local_experts"],
                                          experts_per_token=config["num_experts_per_tok"]))


def widths(spec):
    """One expert's working tensors at their widest, for every token of a batch at once (a batch
    routed to one expert in full), beside the router's logits."""
    base = llama.widths(spec)
    return replace(base, mlp=base.mlp + spec.arch.num_experts)


class DecoderLayer(llama.DecoderLayer):
    MOE = "block_sparse_moe"

    def _mlp_specs(self):
        s, h, f = self.spec, self.spec.hidden_size, self.spec.ffn_size
        shapes = [("gate", (s.arch.num_experts, h))]
        for e in range(s.arch.num_experts):
            shapes += [(f"experts.{e}.w1", (f, h)), (f"experts.{e}.w2", (h, f)), (f"experts.{e}.w3", (f, h))]
        return self._projections(self.MOE, shapes, False)

    def _mlp(self, h, w):
        x = self._norm(h, w, "pre_mlp")
        flat = x.reshape(-1, x.shape[-1])
        del x
        chosen, weights = self._route(flat, w)
        out = torch.zeros_like(flat)
        for e in chosen.unique().tolist():  # the experts this batch uses, each over its tokens at once
            token, slot = torch.where(chosen == e)
            y = self._expert(flat[token], w, e) * weights[token, slot, None].to(flat.dtype)
            out.index_add_(0, token, y)
        return self._norm(out.view_as(h), w, "post_mlp")

    def _route(self, flat, w):
        """The experts each token goes to [tokens, k] and their weights."""
        a = self.spec.arch
        probs = torch.softmax(self._linear(flat, w, f"{self.MOE}.gate").float(), dim=-1)
        top, chosen = torch.topk(probs, a.experts_per_token, dim=-1)
        if a.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        return chosen, top

    def _expert(self, x, w, e):
        p = f"{self.MOE}.experts.{e}."
        gated = self.act(self._linear(x, w, p + "w1")).mul_(self._linear(x, w, p + "w3"))
        return self._linear(gated, w, p + "w2")


def build_layers(spec):
    return llama.build_layers(spec, DecoderLayer)
