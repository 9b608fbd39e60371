"""The three prod_env YAML files that make a model runnable by `helm-run` on the flexgen client.

Entries are merged into existing files by name, so one prod_env can hold several models.
The tokenizer entry mirrors what HELM's `--enable-local-huggingface-models` registers for
the same checkpoint (end-of-text and prefix tokens from the tokenizer), so adapters build
the same prompts for both clients.
"""
from __future__ import annotations

import os

import yaml

CLIENT_CLASS = "flexgen_eval.helm.client.FlexGenClient"
TOKENIZER_CLASS = "helm.tokenizers.huggingface_tokenizer.HuggingFaceTokenizer"
FILES = {"model_metadata.yaml": "models", "tokenizer_configs.yaml": "tokenizer_configs",
         "model_deployments.yaml": "model_deployments"}


def helm_name(name: str) -> str:
    """HELM names are `organization/engine`; a bare name goes under `flexgen/`."""
    name = name.strip()
    if not name or name.count("/") > 1 or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"--name must look like 'org/model' or 'model', got {name!r}")
    return name if "/" in name else f"flexgen/{name}"


def entries(name: str, checkpoint: str, client_args: dict, max_sequence_length: int, tokenizer,
            num_parameters: int | None = None) -> dict:
    """{file name: entry} for one model."""
    metadata = {
        "name": name,
        "display_name": name.split("/")[1],
        "description": f"{os.path.basename(checkpoint.rstrip('/'))} on the flexgen offloading runtime",
        "creator_organization_name": name.split("/")[0],
        "access": "open",
        "release_date": None,
        "tags": ["TEXT_MODEL_TAG", "FULL_FUNCTIONALITY_TEXT_MODEL_TAG"],
    }
    if num_parameters:
        metadata["num_parameters"] = int(num_parameters)
    tokenizer_config = {
        "name": name,
        "tokenizer_spec": {"class_name": TOKENIZER_CLASS, "args": {"pretrained_model_name_or_path": checkpoint}},
        "end_of_text_token": tokenizer.eos_token or "",
        "prefix_token": tokenizer.bos_token or "",
    }
    deployment = {
        "name": name,
        "model_name": name,
        "tokenizer_name": name,
        "max_sequence_length": int(max_sequence_length),
        "client_spec": {"class_name": CLIENT_CLASS, "args": client_args},
    }
    return {"model_metadata.yaml": metadata, "tokenizer_configs.yaml": tokenizer_config,
            "model_deployments.yaml": deployment}


def write(out_dir: str, new: dict) -> list[str]:
    """Merge one model's entries into out_dir's files (replacing a same-named entry); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for file_name, top_key in FILES.items():
        path = os.path.join(out_dir, file_name)
        doc = {top_key: []}
        if os.path.exists(path):
            with open(path) as f:
                doc = yaml.safe_load(f) or {top_key: []}
            if not isinstance(doc.get(top_key, []), list):
                raise ValueError(f"{path}: '{top_key}' must be a list")
        entry = new[file_name]
        doc[top_key] = [e for e in doc.get(top_key) or [] if e.get("name") != entry["name"]] + [entry]
        with open(path, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        paths.append(path)
    return paths
