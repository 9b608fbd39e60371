"""Model families: one module each (config mapping, weight names, layer maths), and the one table
of them."""
from __future__ import annotations

from ..spec import FAMILIES
from . import gemma2, gemma3, gpt_neox, llama, mixtral, olmo2, olmoe, opt, phi3, qwen3, qwen3_moe

FAMILIES.update(opt=opt, llama=llama, qwen3=qwen3, olmo2=olmo2, gemma2=gemma2, gemma3=gemma3, phi3=phi3,
                gpt_neox=gpt_neox, mixtral=mixtral, qwen3_moe=qwen3_moe, olmoe=olmoe)


def family_of(spec):
    return FAMILIES[spec.family]
