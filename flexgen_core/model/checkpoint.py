"""Read an HF checkpoint tensor by tensor (safetensors or safe-loaded .bin), never the whole model."""
from __future__ import annotations

import json
import os

import torch

# Older OPT checkpoints name tensors "decoder.*" instead of "model.decoder.*".
_ALIASES = (("model.", ""), ("", "model."))


class CheckpointReader:
    def __init__(self, path: str):
        self.path = path
        self.index = self._build_index(path)  # tensor name -> file
        self._open_file: str | None = None
        self._handle = None

    @staticmethod
    def _build_index(path: str) -> dict[str, str]:
        files = os.listdir(path)
        for index_name, kind in (("model.safetensors.index.json", "st"), ("pytorch_model.bin.index.json", "bin")):
            if index_name in files:
                try:
                    with open(os.path.join(path, index_name)) as f:
                        weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"corrupt checkpoint index {index_name} in {path!r}: {e}") from e
                missing = sorted({v for v in weight_map.values() if not os.path.isfile(os.path.join(path, v))})
                if missing:
                    raise FileNotFoundError(f"checkpoint shards listed in {index_name} are missing: {missing}")
                return {k: os.path.join(path, v) for k, v in weight_map.items()}
        singles = sorted(f for f in files if f.endswith(".safetensors")) or sorted(
            f for f in files if f.endswith(".bin") and f.startswith("pytorch_model")
        )
        if not singles:
            raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model*.bin) in {path!r}")
        index = {}
        for name in singles:
            full = os.path.join(path, name)
            for key in _keys_of(full):
                index[key] = full
        return index

    def resolve(self, name: str) -> str | None:
        if name in self.index:
            return name
        for old, new in _ALIASES:
            if name.startswith(old) and new + name[len(old):] in self.index:
                return new + name[len(old):]
        return None

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) is not None

    def get(self, name: str) -> torch.Tensor:
        key = self.resolve(name)
        if key is None:
            raise ValueError(f"checkpoint {self.path!r} lacks tensor {name!r}")
        handle = self._handle_for(self.index[key])
        try:
            return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]
        except Exception as e:  # truncated or corrupt file
            raise ValueError(f"cannot read tensor {key!r} from {self.index[key]!r}: {e}") from e

    def _handle_for(self, file: str):
        if file != self._open_file:
            self._handle = None  # release the previous shard before opening the next
            self._handle = _open(file)
            self._open_file = file
        return self._handle


def _open(file: str):
    try:
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            return safe_open(file, framework="pt", device="cpu")
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"corrupt or unreadable weights file {file!r}: {e}") from e


def _keys_of(file: str) -> list[str]:
    handle = _open(file)
    return list(handle.keys())
