"""`flexgen-eval env`: what this environment provides (for bug reports and results files)."""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata

from flexgen_core import __version__
from flexgen_core.model import store as model_store

PACKAGES = ["torch", "transformers", "tokenizers", "safetensors", "accelerate", "gguf",
            "lm-eval", "crfm-helm", "ortools", "numpy"]


def register(subparsers):
    p = subparsers.add_parser("env", help="print versions, devices, cache and data locations")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> dict:
    try:
        import torch
    except ImportError as e:
        return {"cuda_available": False, "error": f"torch not importable: {e}"}
    info = {"cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(), "devices": []}
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": props.name,
                                    "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def collect() -> dict:
    data_dir = os.environ.get("FLEXGEN_DATA_DIR")
    cache = model_store.cache_root()
    models = {m.name: (str(cache / "models" / m.dir_name)
                       if model_store.is_complete(cache / "models" / m.dir_name) else None)
              for m in model_store.EMBEDDED_MODELS}
    return {
        "flexgen_eval": __version__,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **_devices(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cache_dir": str(cache),
        "embedded_models": models,
        "default_model": model_store.DEFAULT_MODEL,
        "flexgen_data_dir": data_dir,
        "flexgen_data_dir_exists": bool(data_dir) and os.path.isdir(data_dir),
    }


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    gpus = "; ".join(f"cuda:{d['index']} {d['name']} {d['memory_gib']} GiB" for d in info["devices"])
    rows = [
        ("flexgen-eval", info["flexgen_eval"]),
        ("python", f"{info['python']} ({info['python_executable']})"),
        ("platform", info["platform"]),
        ("cpus", f"{info['cpu_count']} (torch threads: {info.get('cpu_threads', '?')})"),
        ("cuda", f"available, CUDA {info['cuda_version']}: {gpus}" if info["cuda_available"]
         else f"not available{' (' + info['error'] + ')' if 'error' in info else ''}"),
        *((name, version or "not installed") for name, version in info["packages"].items()),
        ("cache dir", info["cache_dir"]),
        *((f"model {name}", path or "not fetched (flexgen-eval fetch-model " + name + ")")
          for name, path in info["embedded_models"].items()),
        ("FLEXGEN_DATA_DIR", "unset" if not info["flexgen_data_dir"] else
         f"{info['flexgen_data_dir']} ({'exists' if info['flexgen_data_dir_exists'] else 'missing'})"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
