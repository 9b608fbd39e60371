"""Model families: one module each (config mapping, weight names, layer maths)."""
from __future__ import annotations

from . import llama, opt

FAMILIES = {"opt": opt, "llama": llama}


def family_for_config(config: dict):
    model_type = config.get("model_type", "")
    archs = config.get("architectures") or []
    for module in FAMILIES.values():
        if model_type in module.MODEL_TYPES or any(a in module.ARCHITECTURES for a in archs):
            return module
    known = sorted(t for m in FAMILIES.values() for t in m.MODEL_TYPES)
    raise ValueError(
        f"unsupported architecture: model_type={model_type!r} architectures={archs}; supported model types: {known}"
    )


def family_of(spec):
    return FAMILIES[spec.family]
