"""Model families: one module each (config mapping, weight names, layer maths), and the one table
of them."""
from __future__ import annotations

from ..spec import FAMILIES
from . import llama, olmo2, opt, qwen3

FAMILIES.update(opt=opt, llama=llama, qwen3=qwen3, olmo2=olmo2)


def family_of(spec):
    return FAMILIES[spec.family]
