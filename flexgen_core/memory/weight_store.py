"""Per-layer weights as one flat buffer split across tiers, streamed to the compute device.

Each layer's tensors are packed into a single byte buffer (raw compute dtype, or
group-quantized matrices when weights are compressed) and cut at byte granularity by the policy's weight percentages, so every layer
sends the same share over the link. Disk parts are written once under
`offload_dir` and reused by later runs with the same model, dtype and split.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os

import torch

from ..model.checkpoint import CheckpointReader
from ..model.layers import WeightSpec, storage_plan
from . import weight_copies
from .compression import QuantConfig, dequantize, quantize
from .tiers import DiskArray, TieredRows, TierSet, check_free_space, split_rows

log = logging.getLogger("flexgen")


class LayerLayout:
    """Where each tensor of a layer sits in the layer's byte buffer, and how it is encoded:
    raw in the compute dtype, or group-quantized (matrices, when weights are compressed). The
    tensors streamed every step come first, then the lookup tables the layer stores, so a step
    reads one prefix of the buffer."""

    ALIGN = 16  # keeps every raw tensor view aligned for its dtype

    def __init__(self, streamed: list[WeightSpec], tables: list[WeightSpec], dtype: torch.dtype,
                 quant: QuantConfig | None):
        self.dtype, self.quant = dtype, quant
        self.specs = streamed + tables
        self.entries = []  # (spec, byte offset, byte length, quantized)
        offset = 0
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        for i, spec in enumerate(self.specs):
            if i == len(streamed):
                self.streamed_bytes = offset
            quantized = quant is not None and len(spec.shape) >= 2
            nbytes = spec.numel // spec.shape[-1] * self.row_bytes(spec, quantized)
            self.entries.append((spec, offset, nbytes, quantized))
            offset += -(-nbytes // self.ALIGN) * self.ALIGN
        self.nbytes = offset
        if len(streamed) == len(self.specs):
            self.streamed_bytes = offset
        self.streamed = self.entries[:len(streamed)]
        # what decode() allocates: the dequantized matrices (raw tensors are views)
        self.decoded_bytes = sum(spec.numel * self.itemsize for spec, _, _, quantized in self.streamed if quantized)

    def row_bytes(self, spec: WeightSpec, quantized: bool) -> int:
        return self.quant.packed_bytes(spec.shape[-1]) if quantized else spec.shape[-1] * self.itemsize

    def encode(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = torch.zeros(self.nbytes, dtype=torch.uint8)
        for spec, offset, nbytes, quantized in self.entries:
            t = tensors[spec.name]
            if quantized:
                data = quantize(t.reshape(-1, spec.shape[-1]), self.quant).reshape(-1)
            else:
                data = t.to(self.dtype).contiguous().reshape(-1).view(torch.uint8)
            flat[offset:offset + nbytes] = data
        return flat

    def decode(self, flat: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The streamed tensors: views into `flat` for raw ones; quantized ones are dequantized
        once here, on the device that computes, so each layer is expanded once per block step."""
        out = {}
        for spec, offset, nbytes, quantized in self.streamed:
            data = flat[offset:offset + nbytes]
            if quantized:
                rows = spec.numel // spec.shape[-1]
                out[spec.name] = dequantize(data.view(rows, -1), spec.shape[-1], self.quant, self.dtype).view(spec.shape)
            else:
                out[spec.name] = data.view(self.dtype).view(spec.shape)
        return out


class RowTable:
    """An embedding table inside some layer's buffer, read row by row: a step looks up a few
    token ids, so only their rows cross from wherever the table lives."""

    def __init__(self, buffer: TieredRows, layout: LayerLayout, entry):
        spec, self.offset, _, self.quantized = entry
        self.buffer, self.layout, self.spec = buffer, layout, spec
        self.dim = spec.shape[-1]
        self.row_bytes = layout.row_bytes(spec, self.quantized)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """[*ids.shape, dim] rows on the compute device."""
        if self.buffer.on_device() and not self.quantized:  # resident: a plain embedding
            storage = self.buffer.parts[0][3]
            rows = self.spec.numel // self.dim
            table = storage[self.offset:self.offset + rows * self.row_bytes].view(self.layout.dtype).view(rows, self.dim)
            return torch.nn.functional.embedding(ids.to(table.device), table)
        unique, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        raw = self.buffer.gather(self.offset, self.row_bytes, unique)
        if self.quantized:
            rows = dequantize(raw, self.dim, self.layout.quant, self.layout.dtype)
        else:
            rows = raw.view(self.layout.dtype)
        return rows[inverse.to(rows.device)].view(*ids.shape, self.dim)


class WeightStore:
    def __init__(self, layers, tiers: TierSet, percents, dtype: torch.dtype, source: "WeightSource",
                 quant: QuantConfig | None = None, progress=None):
        self.tiers, self.dtype, self.percents, self.quant = tiers, dtype, tuple(percents), quant
        self.layouts: list[LayerLayout] = []
        self.buffers: list[TieredRows] = []
        self.copy_folder = None  # the offload directory's copy this store uses, once loaded
        key = source.cache_key(dtype, self.percents, quant)
        encoded: dict = {}  # dummy layers of one layout share their bytes
        folder = os.path.join(tiers.offload_dir, "weights", key)
        plan = []  # per layer: its layout, disk file, bytes per tier and whether a valid file is there already
        for layer, (streamed, tables) in zip(layers, storage_plan(layers)):
            layout = LayerLayout(streamed, tables, dtype, quant)
            disk_path = os.path.join(folder, f"{layer.name}.bin")
            counts = split_rows(layout.nbytes, self.percents)
            plan.append((layer, layout, disk_path, counts, counts[2] > 0 and _valid_file(disk_path, counts[2])))
        to_write = sum(counts[2] for *_, counts, reusable in plan if not reusable)
        if to_write:  # checked where the folder will be, before anything is made
            check_free_space(tiers.offload_dir, to_write, f"the weights' disk share ({self.percents[2]:g}%)")
            os.makedirs(folder, exist_ok=True)
        created = []  # files this load writes: removed again if it fails
        try:
            for layer, layout, disk_path, counts, reusable in plan:
                if counts[2] and not reusable:
                    created.append(disk_path)
                    if os.path.exists(disk_path):  # a stale or partial copy: allocated afresh at its size
                        os.remove(disk_path)
                buffer = TieredRows(tiers, (layout.nbytes,), torch.uint8, self.percents, f"w-{layer.name}",
                                    disk_path=disk_path if counts[2] else None)
                self.layouts.append(layout)
                self.buffers.append(buffer)
                if layout.nbytes and not (reusable and counts[0] + counts[1] == 0):
                    flat = source.encoded(layout, encoded)
                    for tier, start, end, storage in buffer.parts:
                        if isinstance(storage, DiskArray):
                            if not reusable:
                                _unmark(disk_path)  # a crash mid-write must not leave a valid-looking file
                                storage.write_all(flat[start:end])
                                _mark_valid(disk_path, end - start)
                        else:
                            storage.copy_(flat[start:end])
                    del flat
                if progress is not None:
                    progress.update(1)
        except BaseException:
            self.free()
            for path in created:  # a failed load leaves no partial copy of the weights behind
                _unmark(path)
                if os.path.exists(path):
                    os.remove(path)
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
            raise
        self.copy_folder = folder if any(counts[2] for *_, counts, _ in plan) else None
        if self.copy_folder:  # kept for later runs: say what it is, and keep the directory under its cap
            description = {"model": source.identity, "dtype": str(dtype).split(".")[-1], "split": list(self.percents),
                           "compression": None if quant is None else f"{quant.bits}-bit, groups of {quant.group_size}"}
            for gone in weight_copies.keep(tiers.offload_dir, folder, description):
                log.info("removed the least recently used weight copy %s (%s, split %s)", gone.path,
                         gone.about.get("model", "?"), gone.about.get("split", "?"))
        home = {entry[0].name: (j, entry) for j, layout in enumerate(self.layouts) for entry in layout.entries}
        self.tables = []  # per layer: {name: RowTable} of the tables it looks up
        for layer in layers:
            found = {}
            for spec in layer.weight_specs():
                if spec.lookup:
                    j, entry = home[spec.name]
                    found[spec.name] = RowTable(self.buffers[j], self.layouts[j], entry)
            self.tables.append(found)

    def load(self, j: int) -> dict[str, torch.Tensor]:
        """The tensors layer j streams, on the compute device (views when they already live
        there), and its lookup tables. The buffers this allocates count as device memory until
        `release(j)`."""
        layout = self.layouts[j]
        self.tiers.allocated("gpu", self.working_bytes(j))
        flat = self.buffers[j].read(stop=layout.streamed_bytes) if layout.streamed_bytes else None
        return {**layout.decode(flat), **self.tables[j]}

    def release(self, j: int):
        """The caller dropped the tensors of a `load(j)`."""
        self.tiers.released("gpu", self.working_bytes(j))

    def working_bytes(self, j: int) -> int:
        """Device bytes a load of layer j allocates: its streamed tensors unless they live on the
        device, plus its dequantized matrices. (A lookup's few rows are not counted.)"""
        layout = self.layouts[j]
        copied = 0 if self.buffers[j].on_device(layout.streamed_bytes) else layout.streamed_bytes
        return copied + layout.decoded_bytes

    def resident(self, j: int) -> bool:
        """Whether a load of layer j is only views of device memory (nothing read or expanded)."""
        return self.working_bytes(j) == 0

    def nbytes(self) -> int:
        return sum(layout.nbytes for layout in self.layouts)

    def free(self):
        for buffer in self.buffers:
            buffer.free()
        self.tables = [{} for _ in self.buffers]
        if self.copy_folder and os.path.isdir(self.copy_folder):
            weight_copies.end_use(self.copy_folder)
        self.copy_folder = None


def _marker(path: str) -> str:
    return path + ".ok"


def _valid_file(path: str, nbytes: int) -> bool:
    try:
        with open(_marker(path)) as f:
            meta = json.load(f)
        size = os.path.getsize(path)
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("bytes") == nbytes == size


def _unmark(path: str):
    try:
        os.remove(_marker(path))
    except FileNotFoundError:
        pass


def _mark_valid(path: str, nbytes: int):
    with open(_marker(path), "w") as f:
        json.dump({"bytes": nbytes}, f)


_DUMMY_BLOCK = 1_000_003  # prime, so tiling does not line rows up with each other


@functools.lru_cache(maxsize=4)
def _dummy_block(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    block = torch.randn(_DUMMY_BLOCK, generator=torch.Generator().manual_seed(0)).mul_(0.02)
    return block.to(dtype)


def dummy_normal(shape) -> torch.Tensor:
    """N(0, 0.02) values for dummy weights (float32): see fill_dummy_."""
    return fill_dummy_(torch.empty(shape))


def fill_dummy_(t: torch.Tensor) -> torch.Tensor:
    """Fill t in place, in its dtype, with N(0, 0.02) values: one seeded random block tiled over it,
    because drawing every value (30B of them for OPT-30B) takes minutes and the values do not change
    speed. The values depend only on the tensor's size."""
    block, flat = _dummy_block(t.dtype), t.view(-1)
    for start in range(0, flat.numel(), _DUMMY_BLOCK):
        piece = flat[start:start + _DUMMY_BLOCK]
        piece.copy_(block[:piece.numel()])
    return t


class WeightSource:
    """Where layer weights come from: a checkpoint directory, or dummy values for benchmarks."""

    def __init__(self, path: str | None, dummy: bool = False, identity: str = ""):
        self.dummy = dummy
        self.reader = None if dummy else CheckpointReader(path)
        self.identity = identity or (path or "")

    def encoded(self, layout: LayerLayout, memo: dict) -> torch.Tensor:
        """A layer's byte buffer. Dummy values depend only on each tensor's shape (fill_dummy_), so
        layers of one layout have the same bytes: encoded once per `memo` (one model load), not 48
        times for OPT-30B."""
        if not self.dummy:
            return layout.encode(self.layer_tensors(layout.specs))
        key = (str(layout.dtype), layout.quant, len(layout.streamed),
               tuple((s.shape, s.init) for s in layout.specs))
        if key not in memo:
            memo[key] = layout.encode(self.layer_tensors(layout.specs))
        return memo[key]

    def cache_key(self, dtype: torch.dtype, percents, quant=None) -> str:
        stamp = {"layout": 2, "id": self.identity, "dummy": "tiled" if self.dummy else False, "dtype": str(dtype),
                 "split": list(percents), "quant": None if quant is None else [quant.bits, quant.group_size]}
        if self.reader is not None:
            stamp["files"] = sorted(
                (os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in set(self.reader.index.values())
            )
        return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]

    def layer_tensors(self, specs: list[WeightSpec]) -> dict[str, torch.Tensor]:
        out = {}
        for s in specs:
            if self.dummy:
                if s.init == "ones":
                    out[s.name] = torch.ones(s.shape)
                elif s.init == "zeros":
                    out[s.name] = torch.zeros(s.shape)
                else:
                    out[s.name] = dummy_normal(s.shape)
            else:
                t = self.reader.get(s.name)
                if tuple(t.shape) != s.shape:
                    raise ValueError(f"tensor {s.name!r} has shape {tuple(t.shape)}, the config implies {s.shape}")
                out[s.name] = t
        return out
