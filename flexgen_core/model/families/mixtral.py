"""Mixtral: Llama whose MLP is a mixture of experts (block_sparse_moe): a router picks the top k of E
SwiGLU experts per token (softmax over the router's logits, renormalised over the k chosen), and
each token's output is the weighted sum of its experts'. Tokens are grouped per expert: one matmul
per expert a batch uses, not one per token. Checkpoints in the hub's layout, one tensor per expert.

Each expert's weights are a placement unit of the weight store (`WeightSpec.expert`): only the
experts the router picks are read, after it has run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..layers import routed_experts, rows_in_few_shapes
from . import llama

MODEL_TYPES = ("mixtral",)
ARCHITECTURES = ("MixtralForCausalLM",)


@dataclass(frozen=True)
class MoeSettings(llama.LlamaSettings):
    num_experts: int = 8
    experts_per_token: int = 2
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum to 1
    expert_ffn_size: int = 0  # each expert's inner width


def spec_from_config(config: dict, name: str = "", family: str = "mixtral", experts: str = "num_local_experts",
                     expert_ffn: str = "intermediate_size", norm_topk_prob: bool = True):
    """A mixture-of-experts Llama; other families name their experts' count and width differently."""
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise ValueError("a mix of dense and expert MLP layers (mlp_only_layers, decoder_sparse_step) is not "
                         "supported yet: every layer must route to experts")
    spec = llama.spec_from_config(config, name, family=family)
    count = config.get(experts, config.get("num_local_experts"))  # transformers 5 saves num_local_experts
    if count is None:
        raise KeyError(experts)
    return replace(spec, arch=MoeSettings(**asdict(spec.arch), num_experts=count,
                                          experts_per_token=config["num_experts_per_tok"],
                                          norm_topk_prob=config.get("norm_topk_prob", norm_topk_prob),
                                          expert_ffn_size=config[expert_ffn]))


def widths(spec):
    """One expert's working tensors at their widest, for every token of a batch at once (a batch
    routed to one expert in full), beside the router's logits."""
    base = llama.widths(spec)
    return replace(base, mlp=3 * spec.arch.expert_ffn_size + spec.arch.num_experts)


class DecoderLayer(llama.DecoderLayer):
    MOE = "block_sparse_moe"  # the checkpoint's name for the mixture, and for each expert's gate, up and down
    EXPERT = ("w1", "w3", "w2")

    def _mlp_specs(self):
        s, h, f = self.spec, self.spec.hidden_size, self.spec.arch.expert_ffn_size
        gate, up, down = self.EXPERT
        share = s.arch.experts_per_token / s.arch.num_experts  # each token multiplies k of the E experts
        specs = self._projections(self.MOE, [("gate", (s.arch.num_experts, h))], False)
        for e in range(s.arch.num_experts):
            shapes = [(f"experts.{e}.{gate}", (f, h)), (f"experts.{e}.{up}", (f, h)), (f"experts.{e}.{down}", (h, f))]
            specs += self._projections(self.MOE, shapes, False, share, expert=e)
        return specs

    def _mlp(self, h, w):
        x = self._norm(h, w, "pre_mlp")
        flat = x.reshape(-1, x.shape[-1])
        del x
        chosen, weights = self._route(flat, w)
        out = torch.zeros_like(flat)
        # the experts this batch uses, each over its tokens at once, read as the router asks for them
        for e, expert in routed_experts(w, chosen.unique().tolist()):
            token, slot = torch.where(chosen == e)
            rows = rows_in_few_shapes(token, flat)
            y = self._expert(flat[rows], expert, e)[: token.shape[0]] * weights[token, slot, None].to(flat.dtype)
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
        p, (gate, up, down) = f"{self.MOE}.experts.{e}.", self.EXPERT
        gated = self.act(self._linear(x, w, p + gate)).mul_(self._linear(x, w, p + up))
        return self._linear(gated, w, p + down)


def build_layers(spec, decoder=DecoderLayer):
    return llama.build_layers(spec, decoder)
