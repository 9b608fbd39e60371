"""How each system's batch size is chosen under the run's memory budget.

- Ours: the planner (cost model + LP over placements and block shapes), capped at `max_batch`.
- Baselines (accelerate, HF generate) have no planner; their rule is the usual one, the largest batch
  that does not run out of memory. On CUDA that is a real out-of-memory search: start from the
  largest candidate that the estimate below admits and step down while `generate` raises
  `torch.cuda.OutOfMemoryError`. On a CPU nothing runs out of memory at these sizes (the budget
  is smaller than the machine), so the budget itself is the limit: a batch fits when its KV cache
  and working activations (`hf_models.working_bytes`, checked against a measured run) plus one
  offloaded layer
  fit, and accelerate's `max_memory` for weights is what the budget leaves after them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flexgen_core.model.spec import ModelSpec
from flexgen_core.units import format_size

from .hf_models import layer_bytes, weight_bytes, working_bytes


def candidate_batches(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to max_batch, and max_batch itself; largest first."""
    out, b = set(), 1
    while b <= max_batch:
        out.add(b)
        b *= 2
    out.add(max_batch)
    return sorted(out, reverse=True)


@dataclass
class Budget:
    gpu: int
    cpu: int
    disk: int
    device: str  # compute device: "cpu" or "cuda"

    def as_memory(self) -> dict:
        return {"gpu": self.gpu, "cpu": self.cpu, "disk": self.disk}

    def planner_memory(self) -> dict:
        """The budget our planner gets: on a CPU both memory tiers are the same RAM, so the whole
        of it is offered as the compute tier (views, no per-step copy), as accelerate gets it."""
        if self.device == "cpu":
            return {"gpu": self.gpu + self.cpu, "cpu": 0, "disk": self.disk}
        return self.as_memory()

    @property
    def compute_memory(self) -> int:
        """Memory the compute device can use directly: the GPU's, or on a CPU all the RAM (the
        runtime's "gpu" and "cpu" tiers are both host memory there)."""
        return self.gpu + self.cpu if self.device == "cpu" else self.gpu


@dataclass
class Choice:
    batch: int | None
    max_memory: dict | None = None
    rule: str = ""
    tried: list = field(default_factory=list)  # [(batch, verdict)]


def accelerate_max_memory(spec: ModelSpec, batch: int, budget: Budget, prompt_len: int, gen_len: int,
                          dtype_bytes: int) -> tuple[dict | None, str]:
    """accelerate's `max_memory` at `batch` (None when the batch cannot fit), and why."""
    work = working_bytes(spec, batch, prompt_len, gen_len, dtype_bytes)
    layer = layer_bytes(spec, dtype_bytes)
    room = budget.compute_memory - work - layer  # one offloaded layer is loaded at a time
    if room < layer:
        return None, (f"working memory {format_size(work)} + an offloaded layer leave "
                      f"{format_size(max(room, 0))} for weights of {format_size(budget.compute_memory)}")
    total = weight_bytes(spec, dtype_bytes)
    if budget.device == "cpu":
        max_memory = {"cpu": int(room)}
        spill = total - room
    else:
        max_memory = {0: int(room), "cpu": int(budget.cpu)}
        spill = total - room - budget.cpu
    if spill > budget.disk:
        return None, f"{format_size(spill)} of weights would go to disk, budget {format_size(budget.disk)}"
    return max_memory, f"weights get {format_size(room)} of memory, working memory {format_size(work)}"


def choose_accelerate(spec: ModelSpec, budget: Budget, prompt_len: int, gen_len: int, dtype_bytes: int,
                      max_batch: int) -> Choice:
    choice = Choice(None, rule="largest batch whose working memory fits the budget"
                    + ("; then stepped down on CUDA out-of-memory" if budget.device == "cuda" else ""))
    for b in candidate_batches(max_batch):
        mm, why = accelerate_max_memory(spec, b, budget, prompt_len, gen_len, dtype_bytes)
        choice.tried.append((b, why))
        if mm is not None:
            choice.batch, choice.max_memory = b, mm
            return choice
    return choice


def hf_fits(spec: ModelSpec, batch: int, budget: Budget, prompt_len: int, gen_len: int,
            dtype_bytes: int) -> tuple[bool, str]:
    need = weight_bytes(spec, dtype_bytes) + working_bytes(spec, batch, prompt_len, gen_len, dtype_bytes)
    ok = need <= budget.compute_memory
    return ok, (f"weights + working memory {format_size(need)} "
                f"{'fit' if ok else 'exceed'} {format_size(budget.compute_memory)}")
