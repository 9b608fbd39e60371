"""Model families: one module each (config mapping, weight names, layer maths), and the one table
of them."""
from __future__ import annotations

from ..spec import FAMILIES
from . import llama, opt

FAMILIES.update(opt=opt, llama=llama)


def family_of(spec):
    return FAMILIES[spec.family]
