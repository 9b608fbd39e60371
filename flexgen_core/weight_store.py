"""Per-layer weights as one flat buffer split across tiers, streamed to the compute device.

Each layer's tensors are packed into a single flat buffer of the compute dtype and
cut at element granularity by the policy's weight percentages, so every layer
sends the same share over the link. Disk parts are written once under
`offload_dir` and reused by later runs with the same model, dtype and split.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from .checkpoint import CheckpointReader
from .layers import WeightSpec
from .tiers import DiskArray, TieredRows, TierSet, split_rows


class LayerWeights:
    def __init__(self, specs: list[WeightSpec], buffer: TieredRows):
        self.specs, self.buffer = specs, buffer
        self.numel = sum(s.numel for s in specs)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for s in self.specs:
            out[s.name] = flat[offset:offset + s.numel].view(s.shape)
            offset += s.numel
        return out


class WeightStore:
    def __init__(self, layers, tiers: TierSet, percents, dtype: torch.dtype, source: "WeightSource",
                 progress=None):
        self.tiers, self.dtype, self.percents = tiers, dtype, tuple(percents)
        self.layers: list[LayerWeights] = []
        key = source.cache_key(dtype, self.percents)
        for layer in layers:
            specs = layer.weight_specs()
            numel = sum(s.numel for s in specs)
            disk_path = os.path.join(tiers.offload_dir, "weights", key, f"{layer.name}.bin")
            os.makedirs(os.path.dirname(disk_path), exist_ok=True)
            counts = split_rows(numel, self.percents)
            reusable = counts[2] > 0 and _valid_file(disk_path, counts[2], dtype)
            buffer = TieredRows(tiers, (numel,), dtype, self.percents, f"w-{layer.name}",
                                disk_path=disk_path if counts[2] else None)
            entry = LayerWeights(specs, buffer)
            if not (reusable and counts[0] + counts[1] == 0):
                flat = source.layer_flat(specs, dtype)
                for tier, start, end, storage in buffer.parts:
                    if isinstance(storage, DiskArray):
                        if not reusable:
                            _unmark(disk_path)  # a crash mid-write must not leave a valid-looking file
                            storage.write_all(flat[start:end])
                            _mark_valid(disk_path, end - start, dtype)
                    else:
                        storage.copy_(flat[start:end])
                del flat
            self.layers.append(entry)
            if progress is not None:
                progress.update(1)

    def load(self, j: int) -> dict[str, torch.Tensor]:
        """All tensors of layer j on the compute device (views when they already live there)."""
        entry = self.layers[j]
        return entry.views(entry.buffer.read())

    def nbytes(self) -> int:
        return sum(e.numel for e in self.layers) * torch.empty((), dtype=self.dtype).element_size()

    def largest_layer_bytes(self) -> int:
        return max(e.numel for e in self.layers) * torch.empty((), dtype=self.dtype).element_size()


def _marker(path: str) -> str:
    return path + ".ok"


def _valid_file(path: str, numel: int, dtype: torch.dtype) -> bool:
    try:
        with open(_marker(path)) as f:
            meta = json.load(f)
        size = os.path.getsize(path)
    except (OSError, json.JSONDecodeError):
        return False
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    return meta.get("bytes") == nbytes == size


def _unmark(path: str):
    try:
        os.remove(_marker(path))
    except FileNotFoundError:
        pass


def _mark_valid(path: str, numel: int, dtype: torch.dtype):
    with open(_marker(path), "w") as f:
        json.dump({"bytes": numel * torch.empty((), dtype=dtype).element_size()}, f)


class WeightSource:
    """Where layer weights come from: a checkpoint directory, or dummy values for benchmarks."""

    def __init__(self, path: str | None, dummy: bool = False, identity: str = ""):
        self.dummy = dummy
        self.reader = None if dummy else CheckpointReader(path)
        self.identity = identity or (path or "")

    def cache_key(self, dtype: torch.dtype, percents) -> str:
        stamp = {"id": self.identity, "dummy": self.dummy, "dtype": str(dtype), "split": list(percents)}
        if self.reader is not None:
            stamp["files"] = sorted(
                (os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in set(self.reader.index.values())
            )
        return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]

    def layer_flat(self, specs: list[WeightSpec], dtype: torch.dtype) -> torch.Tensor:
        flat = torch.empty(sum(s.numel for s in specs), dtype=dtype)
        offset = 0
        gen = torch.Generator().manual_seed(0)
        for s in specs:
            part = flat[offset:offset + s.numel]
            if self.dummy:
                if s.init == "ones":
                    part.fill_(1.0)
                elif s.init == "zeros":
                    part.zero_()
                else:
                    part.copy_(torch.randn(s.numel, generator=gen, dtype=torch.float32).mul_(0.02))
            else:
                t = self.reader.get(s.name)
                if tuple(t.shape) != s.shape:
                    raise ValueError(f"tensor {s.name!r} has shape {tuple(t.shape)}, the config implies {s.shape}")
                part.copy_(t.reshape(-1))
            offset += s.numel
        return flat
