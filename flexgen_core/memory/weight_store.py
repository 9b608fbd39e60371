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
from ..model.layers import EXPERTS, WeightSpec, by_expert, storage_plan, unrouted_share
from . import weight_copies
from .compression import QuantConfig, dequantize, quantize
from .io_queue import IOQueue
from .tiers import TIERS, DiskArray, TieredRows, TierSet, check_free_space, read_each, split_rows

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
    """Every layer's weights, placed on the tiers by the policy's weight percentages. A layer is one
    buffer; a layer with a mixture of experts is its own buffer (attention, router, norms) and one per
    expert, laid out in that order and cut at the policy's boundaries with each expert kept whole, so
    the weights every token needs take the fastest tier first and only the experts a batch is routed
    to are read (`load(j).[EXPERTS].each`)."""

    def __init__(self, layers, tiers: TierSet, percents, dtype: torch.dtype, source: "WeightSource",
                 quant: QuantConfig | None = None, progress=None):
        self.tiers, self.dtype, self.percents, self.quant = tiers, dtype, tuple(percents), quant
        self.layouts: list[LayerLayout] = []
        self.buffers: list[TieredRows] = []
        self.experts: list[list[tuple[int, LayerLayout, TieredRows]]] = []  # per layer: (expert, layout, buffer)
        self._expert_loads: dict[int, ExpertLoads] = {}  # layer -> the experts its current load read
        self.experts_read = {"count": 0, "bytes": 0}  # experts copied off their tier (or dequantized) so far
        self.copy_folder = None  # the offload directory's copy this store uses, once loaded
        key = source.cache_key(dtype, self.percents, quant)
        encoded: dict = {}  # dummy layers of one layout share their bytes
        folder = os.path.join(tiers.offload_dir, "weights", key)
        plan = []  # per layer: [(expert or None, layout, disk file, bytes per tier, a valid file is there)]
        for layer, (streamed, tables) in zip(layers, storage_plan(layers)):
            own_specs, grouped = by_expert(streamed)
            own = LayerLayout(own_specs, tables, dtype, quant)
            experts = [(e, LayerLayout(specs, [], dtype, quant)) for e, specs in grouped.items()]
            own_counts, expert_tiers = place_experts(own.nbytes, [x.nbytes for _, x in experts], self.percents)
            units = [(None, own, f"{layer.name}.bin", own_counts)]
            for (e, layout), tier in zip(experts, expert_tiers):
                counts = [0, 0, 0]
                counts[tier] = layout.nbytes
                units.append((e, layout, f"{layer.name}.expert{e}.bin", counts))
            plan.append([(e, layout, os.path.join(folder, name), counts,
                          counts[2] > 0 and _valid_file(os.path.join(folder, name), counts[2]))
                         for e, layout, name, counts in units])
        units = [unit for layer_units in plan for unit in layer_units]
        to_write = sum(counts[2] for *_, counts, reusable in units if not reusable)
        if to_write:  # checked where the folder will be, before anything is made
            check_free_space(tiers.offload_dir, to_write, f"the weights' disk share ({self.percents[2]:g}%)")
            os.makedirs(folder, exist_ok=True)
        created = []  # files this load writes: removed again if it fails
        try:
            for layer, layer_units in zip(layers, plan):
                self.experts.append([])
                for e, layout, disk_path, counts, reusable in layer_units:
                    buffer = self._place(layout, disk_path, counts, reusable, f"w-{layer.name}", source, encoded,
                                         created)
                    if e is None:
                        self.layouts.append(layout)
                        self.buffers.append(buffer)
                    else:
                        self.experts[-1].append((e, layout, buffer))
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
        self.copy_folder = folder if any(unit[3][2] for unit in units) else None
        if self.copy_folder:  # kept for later runs: say what it is, and keep the directory under its cap
            description = {"model": source.identity, "dtype": str(dtype).split(".")[-1], "split": list(self.percents),
                           "compression": None if quant is None else
                           f"{quant.bits}-bit, groups of {quant.group_size}, {quant.ranges} ranges"}
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

    def _place(self, layout, disk_path, counts, reusable, name, source, encoded, created) -> TieredRows:
        """One unit's buffer on its tiers, its bytes copied in (a valid disk file is reused)."""
        if counts[2] and not reusable:
            created.append(disk_path)
            if os.path.exists(disk_path):  # a stale or partial copy: allocated afresh at its size
                os.remove(disk_path)
        percents = [100 * c / layout.nbytes for c in counts] if layout.nbytes else self.percents
        buffer = TieredRows(self.tiers, (layout.nbytes,), torch.uint8, percents, name,
                            disk_path=disk_path if counts[2] else None)
        try:
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
        except BaseException:
            buffer.free()
            raise
        return buffer

    def load(self, j: int, expert_queue: IOQueue | None = None, tokens: int | None = None) -> dict[str, torch.Tensor]:
        """The tensors layer j streams, on the compute device (views when they already live
        there), and its lookup tables; a layer with experts also gets them under EXPERTS, each read
        when first routed to (through `expert_queue`, or at once without one). `tokens`, the tokens
        the layer will see this step: when they would leave fewer than one expert untouched under
        uniform routing (a prefill, a large decode batch), every expert is read here with the layer,
        so the reads overlap the layer before it rather than wait for the router. The buffers this
        allocates count as device memory until `release(j)`."""
        layout = self.layouts[j]
        self.tiers.allocated("gpu", self.working_bytes(j))
        flat = self.buffers[j].read(stop=layout.streamed_bytes) if layout.streamed_bytes else None
        w = {**layout.decode(flat), **self.tables[j]}
        if self.experts[j]:
            loads = w[EXPERTS] = self._expert_loads[j] = ExpertLoads(self, j, expert_queue)
            if tokens is not None and self.untouched_experts(j, tokens) < 1:
                loads.read_all()
        return w

    def untouched_experts(self, j: int, tokens: int) -> float:
        """Experts of layer j that `tokens` tokens leave unrouted, on average under uniform routing."""
        experts = self.experts[j]
        return len(experts) * unrouted_share(experts[0][1].specs[0].token_share, tokens)

    def release(self, j: int):
        """The caller dropped the tensors of a `load(j)`."""
        self.tiers.released("gpu", self.working_bytes(j))
        loads = self._expert_loads.pop(j, None)
        if loads is not None:
            loads.release()

    def working_bytes(self, j: int) -> int:
        """Device bytes a load of layer j allocates: its streamed tensors unless they live on the
        device, plus its dequantized matrices. (A lookup's few rows are not counted, nor experts:
        each is counted when it is read.)"""
        return _working_bytes(self.layouts[j], self.buffers[j])

    def layer_bytes(self, j: int) -> int:
        """Bytes of layer j's weights, its experts included: the most a step of it reads."""
        return self.layouts[j].nbytes + sum(layout.nbytes for _, layout, _ in self.experts[j])

    def resident(self, j: int) -> bool:
        """Whether a load of layer j is only views of device memory (nothing read or expanded)."""
        return self.working_bytes(j) == 0

    def nbytes(self) -> int:
        return sum(self.layer_bytes(j) for j in range(len(self.layouts)))

    def expert_stats(self) -> dict:
        """Bytes of experts per tier, how many experts each tier holds (all layers), and how many were
        read (with their bytes) since the model was loaded."""
        out = {"bytes": dict.fromkeys(TIERS, 0), "count": dict.fromkeys(TIERS, 0), "read": dict(self.experts_read)}
        for experts in self.experts:
            for _, layout, buffer in experts:
                tier = buffer.only_tier()
                if tier is not None:
                    out["bytes"][tier] += layout.nbytes
                    out["count"][tier] += 1
        return out

    def free(self):
        for loads in self._expert_loads.values():
            loads.release()
        self._expert_loads = {}
        for buffer in self.buffers + [b for experts in self.experts for _, _, b in experts]:
            buffer.free()
        self.tables = [{} for _ in self.buffers]
        if self.copy_folder and os.path.isdir(self.copy_folder):
            weight_copies.end_use(self.copy_folder)
        self.copy_folder = None


def _working_bytes(layout: LayerLayout, buffer: TieredRows) -> int:
    copied = 0 if buffer.on_device(layout.streamed_bytes) else layout.streamed_bytes
    return copied + layout.decoded_bytes


def place_experts(own_bytes: int, expert_bytes: list[int], percents) -> tuple[list[int], list[int]]:
    """A layer's bytes per tier cut by the policy's percentages, its own weights first on the fastest
    tiers (every token needs them), then its experts, each kept whole on the fastest tier with room
    left for all of it: (bytes of its own weights per tier, the tier index of each expert). No tier
    holds more than its share; disk takes the rounding."""
    total = own_bytes + sum(expert_bytes)
    first, second, _ = split_rows(total, percents)
    own_gpu = min(first, own_bytes)
    own_cpu = min(second, own_bytes - own_gpu)
    own = [own_gpu, own_cpu, own_bytes - own_gpu - own_cpu]
    room = [first - own_gpu, second - own_cpu]
    tiers = []
    for n in expert_bytes:
        tier = next((t for t in (0, 1) if room[t] >= n), 2)
        if tier < 2:
            room[tier] -= n
        tiers.append(tier)
    return own, tiers


# The experts a router asks for and the disk holds are read in this many groups, each group's reads in
# flight together, the second group while the first computes: read one expert at a time, the disk
# waited between experts (12.6 MB each in OLMoE-1B-7B, ~6 a layer in a batch-1 decode step; bf16, 71%
# of the weights on disk, 2-core EPYC VM: 1.19 s a decode step one by one, 0.96 s in two groups).
EXPERT_READ_GROUPS = 2


class _OneOf:
    """The i-th result of a pending read of several."""

    def __init__(self, pending, i: int):
        self.pending, self.i = pending, i

    def result(self):
        return self.pending.result()[self.i]


class ExpertLoads:
    """The experts of one load of a layer: each read (and dequantized) once, when a batch is first
    routed to it, and kept for the block's other batches until the layer is released. Asked for
    several, it queues every missing read at once (in EXPERT_READ_GROUPS reads) and hands out those
    on the device first, so reads overlap the other experts' compute."""

    def __init__(self, store: WeightStore, j: int, queue: IOQueue | None):
        self.store, self.queue, self.layer = store, queue, j
        self.units = {e: (layout, buffer) for e, layout, buffer in store.experts[j]}
        self.loaded: dict[int, object] = {}  # expert -> its tensors, or the pending read of them
        self.held = 0  # device bytes the reads allocated

    def each(self, experts):
        experts = list(experts)
        waiting = [e for e in experts if e not in self.loaded and not self._on_device(e)]
        for e in waiting:
            layout, buffer = self.units[e]
            self._hold(_working_bytes(layout, buffer))
            self._count(layout)
        size = max(1, -(-len(waiting) // EXPERT_READ_GROUPS))
        for group in (waiting[i:i + size] for i in range(0, len(waiting), size)):
            if self.queue is None:
                self.loaded.update(zip(group, self._read_many(group)))
                continue
            read = self.queue.submit(self._read_many, group)
            self.loaded.update((e, _OneOf(read, i)) for i, e in enumerate(group))
        for e in [e for e in experts if e not in waiting] + waiting:
            yield e, self._tensors(e)

    def read_all(self):
        """Every expert now, on this thread, before the router has run, their disk reads in flight
        together."""
        wanted = [e for e in self.units if not self._on_device(e)]
        for e in wanted:
            layout, buffer = self.units[e]
            self._hold(_working_bytes(layout, buffer))
            self._count(layout)
        self.loaded.update(zip(wanted, self._read_many(wanted)))

    def _count(self, layout):
        self.store.experts_read["count"] += 1
        self.store.experts_read["bytes"] += layout.nbytes

    def _on_device(self, e) -> bool:
        layout, buffer = self.units[e]
        return _working_bytes(layout, buffer) == 0

    def _read(self, e) -> dict[str, torch.Tensor]:
        return self._read_many([e])[0]

    def _read_many(self, experts) -> list[dict[str, torch.Tensor]]:
        flats = read_each([self.units[e][1] for e in experts])
        return [self.units[e][0].decode(flat) for e, flat in zip(experts, flats)]

    def _tensors(self, e) -> dict[str, torch.Tensor]:
        if e not in self.loaded:  # raw on the device: views
            self.loaded[e] = self._read(e)
        pending = self.loaded[e]
        if not isinstance(pending, dict):
            self.loaded[e] = pending = pending.result()
        return pending

    def _hold(self, nbytes: int):
        self.held += nbytes
        self.store.tiers.allocated("gpu", nbytes)

    def release(self):
        self.store.tiers.released("gpu", self.held)
        self.held, self.loaded = 0, {}


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
        stamp = {"layout": 3, "id": self.identity, "dummy": "tiled" if self.dummy else False, "dtype": str(dtype),
                 "split": list(percents), "quant": None if quant is None else [quant.bits, quant.group_size, quant.ranges]}
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
