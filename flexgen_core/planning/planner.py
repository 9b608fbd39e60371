"""Choose a Policy: a linear program for the placement inside a search over block shapes.

For a fixed block shape (gpu_batch_size, num_gpu_batches, CPU attention) every busy time
and memory total of the cost model is affine in the nine placement fractions, so GLOP
solves the placement exactly: minimise the block's time subject to each tier's memory
(less a safety margin). With overlap a layer step costs the max over resources; the LP
carries one epigraph variable per distinct layer step, t >= busy_r for every resource r,
which is exact because the objective only pushes t down. Weights kept 100% on the
device need no streaming buffers, a saving no linear term can express, so that case is
a second LP with w_gpu fixed to 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ortools.linear_solver import pywraplp

from ..memory.tiers import TIERS
from ..model.spec import ModelSpec
from ..units import format_size, parse_size
from .cost_model import VARS, BlockModel, Estimate, default_dtype_bytes
from .hardware import HardwareProfile, load_profile
from .policy import Policy
from .sizes import experts_per_tier

GPU_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256,
                   320, 384, 448, 512)
NUM_GPU_BATCHES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)
# shares of the off-device cache attended on the CPU: the product of a share and a placement
# fraction is not linear, so the search tries these instead of the LP choosing one
CPU_ATTENTION_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
ROUNDING = 1e-4  # percentages are rounded to 0.01, moving each share by less than this fraction
TIE_BREAK = 1e-6  # weight of total busy time next to the overlapped (max) time
FULL = 0.995  # a tier this full counts as the binding constraint
TIER_NAMES = {"gpu": "gpu memory", "cpu": "cpu memory", "disk": "disk space"}
RESOURCE_NAMES = {"device": "device compute", "cpu": "CPU compute", "h2d": "CPU->GPU link",
                  "d2h": "GPU->CPU link", "disk": "disk"}


class InfeasibleBudget(ValueError):
    """No block shape fits the memory budget; the message names the short tier and by how much."""

    def __init__(self, message: str, shortfall: dict):
        super().__init__(message)
        self.shortfall = shortfall  # {tier: bytes missing}


@dataclass
class Plan:
    policy: Policy
    estimate: Estimate
    model: str
    hardware: str
    budget: dict  # {tier: bytes} as given
    usable: dict  # {tier: bytes} after the margin
    margin: float
    binding: str  # what stops a faster plan
    lp_solved: int = 0
    notes: list = field(default_factory=list)
    experts: dict | None = None  # a mixture's experts per decoder layer on each tier

    @property
    def throughput(self) -> float:
        return self.estimate.throughput

    @property
    def prefill_time(self) -> float:
        return self.estimate.prefill_time

    @property
    def decode_time(self) -> float:
        return self.estimate.decode_time

    @property
    def peak_memory(self) -> dict:
        return self.estimate.peak_memory

    def describe(self) -> str:
        e, p = self.estimate, self.policy
        name = lambda r: RESOURCE_NAMES.get(r, r)  # noqa: E731
        lines = [
            f"plan for {self.model}: prompt {e.prompt_len} + gen {e.gen_len} tokens on {self.hardware} "
            f"(fp{8 * e.dtype_bytes} compute)",
            f"  policy     {p.describe()}",
            f"  percent    {' '.join(f'{x:g}' for x in (*p.weights[:2], *p.cache[:2], *p.activations[:2]))}"
            f"  (FlexGen --percent order)",
            f"  predicted  {e.throughput:.4g} token/s generated: {e.block_size} sequences x {e.gen_len} tokens "
            f"in {e.total_time:.4g} s (prefill {e.prefill_time:.4g} s, decode {e.decode_time:.4g} s)",
            f"  I/O bound  {e.io_bound_throughput:.4g} token/s with free compute" if e.io_time > 0 else
            "  I/O bound  none: nothing is streamed",
            "  memory     " + ", ".join(
                f"{t} {format_size(e.peak_memory[t])} of {format_size(self.usable[t])}" for t in TIERS)
            + f" usable ({self.margin:.0%} margin)",
            f"  bottleneck prefill: {name(e.bottleneck('prefill'))}"
            + (f"; decode: {name(e.bottleneck('decode'))}" if e.gen_len > 1 else ""),
            f"  binding    {self.binding}",
        ]
        if self.experts:
            lines.insert(3, "  experts    " + " / ".join(f"{n} {t}" for t, n in self.experts.items())
                         + f" of each layer's {sum(self.experts.values())} (its own weights first on the fastest tier)")
        lines += [f"  note       {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        p = self.policy
        return {
            "model": self.model, "hardware": self.hardware,
            "policy": {
                "weights": list(p.weights), "cache": list(p.cache), "activations": list(p.activations),
                "gpu_batch_size": p.gpu_batch_size, "num_gpu_batches": p.num_gpu_batches,
                "cpu_attention": p.cpu_attention, "overlap": p.overlap, "compress_weight": p.compress_weight,
                "compress_cache": p.compress_cache, "compression_bits": p.compression_bits,
                "compression_group_size": p.compression_group_size, "weight_ranges": p.weight_ranges,
                "cache_keys": p.cache_keys,
            },
            "estimate": self.estimate.to_dict(),
            "budget_bytes": self.budget, "usable_bytes": {t: int(v) for t, v in self.usable.items()},
            "margin": self.margin, "binding": self.binding, "lp_solved": self.lp_solved, "notes": self.notes,
            "experts_per_layer": self.experts,
        }


def plan_policy(spec: ModelSpec, prompt_len: int, gen_len: int, memory: dict,
                hardware: HardwareProfile | str = "t4", dtype_bytes: int | None = None,
                compress_weight: bool = False, compress_cache: bool = False, cpu_attention: float | None = None,
                margin: float = 0.1, overlap: bool = True, max_block_size: int | None = None,
                gpu_batch_sizes=GPU_BATCH_SIZES, num_gpu_batches=NUM_GPU_BATCHES,
                weights: tuple | None = None, compression: dict | None = None) -> Plan:
    """The fastest policy (most generated tokens per second) that fits `memory`.

    memory: {"gpu": .., "cpu": .., "disk": ..} as bytes or strings like "16GiB" (a missing tier
    has none). dtype_bytes: None picks the runtime's compute dtype (fp16 on a GPU, fp32 on a
    CPU). cpu_attention: the share of the off-device cache attended on the CPU (True: all); None tries
    CPU_ATTENTION_SHARES on a GPU (none when the cache is compressed, as in the paper).
    weights: fixed % gpu/cpu/disk of the weights (a model already loaded): only the block shape and
    the cache and activation placement are chosen, e.g. again for each bucket of request lengths.
    compression: Policy's compression fields (compression_bits, compression_group_size, weight_ranges,
    cache_keys) for the compressed kinds.
    """
    hw = load_profile(hardware)
    dt = dtype_bytes or default_dtype_bytes(hw)
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    unknown = set(memory) - set(TIERS)
    if unknown:
        raise ValueError(f"unknown memory tiers {sorted(unknown)}; use {', '.join(TIERS)}")
    budget = {t: parse_size(memory.get(t, 0)) for t in TIERS}
    usable = {t: budget[t] * (1 - margin) for t in TIERS}
    if cpu_attention is None:
        attn_options = (0.0,) if compress_cache or hw.device == "cpu" else CPU_ATTENTION_SHARES
    else:
        attn_options = (cpu_attention,)
    def shape(b, k, attn):
        return Policy(gpu_batch_size=b, num_gpu_batches=k, cpu_attention=attn, overlap=overlap,
                      compress_weight=compress_weight, compress_cache=compress_cache, **(compression or {}))

    best, solved, frontier = None, 0, {}
    for attn in attn_options:
        for b in sorted(gpu_batch_sizes):
            fitted_any = False
            for k in sorted(num_gpu_batches):
                if max_block_size and b * k > max_block_size:
                    break
                model = BlockModel(spec, shape(b, k, attn), prompt_len, gen_len, hw, dt)
                lp, found = PlacementLP(model, usable, fixed_weights=weights), None
                for all_gpu in _weight_cases(model, usable, weights):
                    solved += 1
                    result = lp.solve(all_gpu)
                    if result and (found is None or result[0] < found[0]):
                        found = result
                if found is None:
                    frontier[attn, b] = k  # larger blocks need more of every tier
                    break
                fitted_any = True
                if best and b * k * gen_len / found[0] < best[1].throughput * (1 - 1e-3):
                    continue  # clearly slower; rounding moves the time by far less than this
                candidate = _policy_from(found[1], shape(b, k, attn))
                if weights is not None:  # exactly as loaded, not as rounded back from the LP
                    candidate = candidate.with_(weights=tuple(weights))
                if gen_len == 1:  # one step keeps no cache: say so rather than the LP's arbitrary vertex
                    candidate = candidate.with_(cache=(100.0, 0.0, 0.0))
                est = model.evaluate(candidate)
                if best is None or est.throughput > best[1].throughput * (1 + 1e-9):
                    best = (model, est)
            if not fitted_any:
                break
    if best is None:
        raise _infeasible(spec, prompt_len, gen_len, hw, dt, shape(1, 1, attn_options[0]), budget, usable, margin)

    model, est = best
    binding = _binding(spec, prompt_len, gen_len, hw, dt, est, usable, frontier, max_block_size,
                       gpu_batch_sizes, num_gpu_batches)
    notes = []
    if est.policy.cpu_attention and compress_cache:
        notes.append("CPU attention over a compressed cache dequantises on the CPU; the paper turns it off")
    return Plan(policy=est.policy, estimate=est, model=spec.name or spec.family, hardware=hw.name,
                budget=budget, usable=usable, margin=margin, binding=binding, lp_solved=solved, notes=notes,
                experts=experts_per_tier(spec, est.policy.weights))


def _weight_cases(model: BlockModel, usable: dict, fixed_weights=None) -> tuple:
    """All weights resident on the device is its own case (no streaming buffers); worth an LP only
    when they could fit."""
    if fixed_weights is not None:
        return (fixed_weights[0] >= 100.0 - 1e-9,)
    return (False, True) if model.total_weight_bytes <= usable["gpu"] else (False,)


class PlacementLP:
    """The placement LP of one block shape. Built once; the all-weights-on-device case only
    changes bounds, so it is a re-solve rather than a second model."""

    def __init__(self, model: BlockModel, usable: dict, slack_weights: dict | None = None,
                 fixed_weights: tuple | None = None):
        """With `slack_weights` the memory limits may be exceeded at that cost per byte and the
        objective is the weighted overshoot (to say which tier is short); otherwise it is time."""
        self.model, self.usable = model, usable
        self.solver = solver = pywraplp.Solver.CreateSolver("GLOP")
        self.x = x = {v: solver.NumVar(0.0, 1.0, v) for v in VARS}
        self.fixed_weights = fixed_weights
        if fixed_weights is not None:
            for t, pct in zip(TIERS, fixed_weights):
                x[f"w_{t}"].SetBounds(pct / 100.0, pct / 100.0)
        for kind in ("w", "c", "a"):
            row = solver.Constraint(1.0, 1.0)
            for t in TIERS:
                row.SetCoefficient(x[f"{kind}_{t}"], 1.0)
        objective = solver.Objective()
        self.rows, self.slack = {}, {}
        for tier, lins in model.memory_terms(False).items():
            scale = 1.0 / max(usable[tier], 1 << 30)  # rows in units of the budget, for conditioning
            if slack_weights:
                self.slack[tier] = solver.NumVar(0.0, solver.infinity(), f"short_{tier}")
                objective.SetCoefficient(self.slack[tier], slack_weights[tier] * scale)
            self.rows[tier] = []
            for lin in lins:
                row = solver.Constraint(-solver.infinity(), 0.0)
                for v, c in lin.coef.items():
                    row.SetCoefficient(x[v], c * scale)
                if slack_weights:
                    row.SetCoefficient(self.slack[tier], -scale)
                self.rows[tier].append((row, scale))
        self.epigraph = []
        if not slack_weights:
            self._add_time(objective)
        objective.SetMinimization()

    def _add_time(self, objective):
        solver, x, overlap = self.solver, self.x, self.model.shape.overlap
        total = {}  # sum of all busy times: the whole objective without overlap, a tie-breaker with it
        for i, (_, mult, busy) in enumerate(self.model.time_terms()):
            if overlap:  # epigraph of the max over resources
                t = solver.NumVar(0.0, solver.infinity(), f"t{i}")
                objective.SetCoefficient(t, mult)
                self.epigraph.append((t, mult))
                for lin in busy.values():
                    if not lin.coef and lin.const <= 0:
                        continue  # an idle resource
                    row = solver.Constraint(lin.const, solver.infinity())
                    row.SetCoefficient(t, 1.0)
                    for v, c in lin.coef.items():
                        row.SetCoefficient(x[v], -c)
            for lin in busy.values():
                if not overlap:
                    objective.SetOffset(objective.offset() + mult * lin.const)
                for v, c in lin.coef.items():
                    total[v] = total.get(v, 0.0) + mult * c
        # With overlap many placements tie on the max; among them prefer the least traffic, so data
        # stays in the fastest tier that has room instead of wherever the solver's vertex lands.
        weight = TIE_BREAK if overlap else 1.0
        for v, c in total.items():
            objective.SetCoefficient(x[v], weight * c)

    def solve(self, weights_all_gpu: bool = False):
        """(block time in seconds, fractions[, shortfall]) or None when infeasible."""
        if self.fixed_weights is None:
            self.x["w_gpu"].SetLb(1.0 if weights_all_gpu else 0.0)
        for tier, lins in self.model.memory_terms(weights_all_gpu).items():
            # leave room for rounding the shares to hundredths of a percent afterwards
            pad = ROUNDING * max(sum(abs(c) for c in lin.coef.values()) for lin in lins)
            limit = max(0.0, self.usable[tier] - pad)
            for (row, scale), lin in zip(self.rows[tier], lins):
                row.SetUb((limit - lin.const) * scale)
        if self.solver.Solve() != pywraplp.Solver.OPTIMAL:
            return None
        fracs = {v: var.solution_value() for v, var in self.x.items()}
        if self.slack:
            return self.solver.Objective().Value(), fracs, {t: s.solution_value() for t, s in self.slack.items()}
        if self.epigraph:  # the max-time part, without the tie-breaker
            return sum(mult * t.solution_value() for t, mult in self.epigraph), fracs
        return self.solver.Objective().Value(), fracs


def _policy_from(fracs: dict, shape: Policy) -> Policy:
    """Percentages with two decimals summing to exactly 100 (largest remainder)."""
    split = {}
    for kind, attr in (("w", "weights"), ("c", "cache"), ("a", "activations")):
        hundredths = [max(0.0, fracs[f"{kind}_{t}"]) * 10000 for t in TIERS]
        scale = 10000 / sum(hundredths)
        hundredths = [h * scale for h in hundredths]
        floors = [int(h) for h in hundredths]
        order = sorted(range(3), key=lambda i: hundredths[i] - floors[i], reverse=True)
        for i in order[:10000 - sum(floors)]:
            floors[i] += 1
        split[attr] = tuple(f / 100 for f in floors)
    return shape.with_(**split)


def _shortfall(model: BlockModel, usable: dict) -> dict:
    """Bytes each tier lacks for the cheapest placement of this block shape. Overflow is charged to
    the slowest tier first (disk, then CPU), so a tier is named only when faster ones cannot help."""
    lp, best = PlacementLP(model, usable, slack_weights={"gpu": 4.0, "cpu": 2.0, "disk": 1.0}), None
    for all_gpu in _weight_cases(model, usable):
        result = lp.solve(all_gpu)
        if result and (best is None or result[0] < best[0]):
            best = result
    return {t: v for t, v in best[2].items() if v > 0.5} if best else {}


def _infeasible(spec, prompt_len, gen_len, hw, dt, shape, budget, usable, margin) -> InfeasibleBudget:
    model = BlockModel(spec, shape, prompt_len, gen_len, hw, dt)
    short = _shortfall(model, usable)
    parts = [f"{TIER_NAMES[t]} is short by {format_size(v)} (needs {format_size(usable[t] + v)}, budget "
             f"{format_size(budget[t])} less the {margin:.0%} margin = {format_size(usable[t])})"
             for t, v in short.items()]
    what = "; ".join(parts) or "no placement fits"
    if short:  # overflow is charged to the slowest tier first: these are the cheapest bytes to add
        what += ". The cheapest fix: " + " and ".join(
            f"a {t} budget of at least {format_size((usable[t] + v) / (1 - margin))}" for t, v in short.items())
        what += "" if shape.compress_weight else ", or compressed weights (compress_weight)"
    return InfeasibleBudget(
        f"{spec.name or spec.family} does not fit the memory budget at prompt {prompt_len} + gen {gen_len} "
        f"even with one sequence per block: {what}", short)


def _binding(spec, prompt_len, gen_len, hw, dt, est: Estimate, usable, frontier, max_block_size,
             gpu_batch_sizes, num_gpu_batches) -> str:
    full = [t for t in TIERS if usable[t] > 0 and est.peak_memory[t] >= FULL * usable[t]]
    if full:
        return " and ".join(f"{TIER_NAMES[t]} ({format_size(est.peak_memory[t])} of {format_size(usable[t])})"
                            for t in full)
    p = est.policy
    b, k = p.gpu_batch_size, p.num_gpu_batches
    larger_k = [v for v in sorted(num_gpu_batches) if v > k]
    if max_block_size and (not larger_k or b * larger_k[0] > max_block_size):
        return f"max_block_size {max_block_size}"
    if larger_k and frontier.get((p.cpu_attention, b)) == larger_k[0]:
        bigger = p.with_(num_gpu_batches=larger_k[0])
        short = _shortfall(BlockModel(spec, bigger, prompt_len, gen_len, hw, dt), usable)
        if short:
            t, v = max(short.items(), key=lambda kv: kv[1])
            return f"{TIER_NAMES[t]} (a {b}x{larger_k[0]} block would need {format_size(v)} more)"
    if not larger_k and b == max(gpu_batch_sizes):
        return "the largest block shape searched"
    slowest = est.bottleneck("decode") or est.bottleneck("prefill")
    return f"{RESOURCE_NAMES.get(slowest, slowest)}; larger blocks fit but were predicted slower"
