"""Time and peak memory of one block under a Policy, from a model spec and a hardware profile.

The model follows the runtime's schedule: for each token step (prefill, then gen_len-1
decode steps) and each layer (embedding, decoders, head), the block's num_gpu_batches
batches are computed while the next layer's weights and the next batch's cache and
activations stream in and the previous batch's are written out. Each piece of work
occupies one resource (device compute, CPU compute, the CPU->device link, the
device->CPU link, the disk); a layer step costs the busiest resource's time when
overlapping, and the sum of all when not.

Every busy time and every memory total is an affine function (`Lin`) of the nine
placement fractions, so the planner can hand exactly these expressions to a linear
program; `estimate` just evaluates them at a Policy's percentages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..memory.compression import scratch_bytes
from ..memory.io_queue import WRITES_IN_FLIGHT
from ..memory.tiers import TIERS
from ..model.spec import ModelSpec
from ..units import format_size
from .hardware import HardwareProfile, load_profile
from .policy import Policy
from .sizes import model_sizes

KINDS = ("w", "c", "a")  # weights, KV cache, activations
VARS = tuple(f"{k}_{t}" for k in KINDS for t in TIERS)  # w_gpu, w_cpu, w_disk, c_gpu, ...
RESOURCES = ("device", "cpu", "h2d", "d2h", "disk")
IO_RESOURCES = ("h2d", "d2h", "disk")
MAX_DECODE_SEGMENTS = 16  # decode steps are grouped (mean context per group) beyond this many


class Lin:
    """const + sum(coef[v] * x[v]) over placement fractions x in [0, 1]."""

    __slots__ = ("const", "coef")

    def __init__(self, const: float = 0.0, coef: dict | None = None):
        self.const, self.coef = float(const), dict(coef or {})

    @classmethod
    def var(cls, *names: str, scale: float = 1.0) -> "Lin":
        return cls(0.0, {n: scale for n in names})

    def __add__(self, other):
        if not isinstance(other, Lin):
            return Lin(self.const + other, self.coef)
        coef = dict(self.coef)
        for k, v in other.coef.items():
            coef[k] = coef.get(k, 0.0) + v
        return Lin(self.const + other.const, coef)

    __radd__ = __add__

    def __mul__(self, scale: float) -> "Lin":
        return Lin(self.const * scale, {k: v * scale for k, v in self.coef.items()})

    __rmul__ = __mul__

    def value(self, x: dict) -> float:
        return self.const + sum(v * x[k] for k, v in self.coef.items())


def fractions(policy: Policy) -> dict:
    """The policy's percentages as the fractions the expressions take."""
    out = {}
    for kind, attr in zip(KINDS, ("weights", "cache", "activations")):
        for tier, pct in zip(TIERS, getattr(policy, attr)):
            out[f"{kind}_{tier}"] = pct / 100.0
    return out


def off_device(kind: str, scale: float = 1.0) -> Lin:
    return Lin.var(f"{kind}_cpu", f"{kind}_disk", scale=scale)


def compressed_bytes_per_element(bits: int, group_size: int) -> float:
    """Group-wise quantisation: `bits` per value plus an fp16 scale and min per group."""
    return bits / 8 + 4 / group_size


@dataclass(frozen=True)
class Step:
    phase: str  # "prefill" or "decode"
    new_tokens: int  # tokens per sequence computed in this step
    context: float  # key positions attended (mean over the steps it stands for)
    count: int  # token steps it stands for


def token_steps(prompt_len: int, gen_len: int, max_segments: int = MAX_DECODE_SEGMENTS) -> list[Step]:
    """Prefill, then decode steps t=1..gen_len-1 attending prompt_len+t positions, in at most
    `max_segments` groups; every term is linear in the context, so a group at its mean context
    is exact except where the busiest resource changes inside the group."""
    steps = [Step("prefill", prompt_len, prompt_len, 1)]
    n = gen_len - 1
    groups = min(n, max_segments)
    for g in range(groups):
        lo, hi = g * n // groups + 1, (g + 1) * n // groups  # decode steps lo..hi
        if hi >= lo:
            steps.append(Step("decode", 1, prompt_len + (lo + hi) / 2, hi - lo + 1))
    return steps


class BlockModel:
    """The cost expressions of one block shape (batch size, batches, flags) for one workload."""

    def __init__(self, spec: ModelSpec, shape: Policy, prompt_len: int, gen_len: int,
                 hardware: HardwareProfile, dtype_bytes: int):
        if prompt_len < 1 or gen_len < 1:
            raise ValueError(f"prompt_len and gen_len must be positive, got {prompt_len}, {gen_len}")
        if prompt_len + gen_len > spec.max_seq_len:
            raise ValueError(f"prompt_len + gen_len = {prompt_len + gen_len} exceeds the model's "
                             f"max_seq_len {spec.max_seq_len}")
        self.spec, self.shape, self.hw = spec, shape, hardware
        self.s, self.n, self.dt = prompt_len, gen_len, dtype_bytes
        self.b, self.k = shape.gpu_batch_size, shape.num_gpu_batches
        self.comp = compressed_bytes_per_element(shape.compression_bits, shape.compression_group_size)
        self.wb = self.comp if shape.compress_weight else dtype_bytes  # weight bytes/element at rest and in flight
        self.cb = self.comp if shape.compress_cache else dtype_bytes
        self.sizes = model_sizes(spec)
        self.windows = spec.windows()
        self.numel = {k: v.streamed for k, v in self.sizes.layers.items()}  # streamed per step
        self.stored = {k: v.stored for k, v in self.sizes.layers.items()}
        self.matmul = {k: v.matmul for k, v in self.sizes.layers.items()}
        self.count = dict(self.sizes.count)
        # a CPU runs a decode step's decoder layer once over all batches of the block (runtime/scheduler.py)
        self.merged_decode = hardware.device == "cpu"
        self.steps = token_steps(prompt_len, gen_len)
        self._terms = None

    # -- sizes -----------------------------------------------------------------------
    def kept(self, positions: float) -> float:
        """Cache positions a decoder layer keeps of `positions`, on average over the layers: a sliding
        layer keeps at most its window."""
        windows = self.windows
        return sum(positions if w is None else min(positions, w) for w in windows) / len(windows)

    def cache_bytes(self, positions: float, per_elem: float | None = None, widest: bool = False) -> float:
        """K and V of one GPU batch, one decoder layer: the average layer (what the layers hold and move
        in all), or with `widest` a layer that keeps every position (what one layer's buffers take)."""
        kept = positions if widest else self.kept(positions)
        stored = 2 * self.b * self.sizes.widths.kv * kept * (per_elem or self.cb)
        if per_elem is None and self.shape.compress_cache and self.shape.cache_keys == "channel":
            # keys per channel: a layer also holds the group filling in full precision (sliding layers,
            # which keep per-token keys, counted too: an upper bound)
            stored += self.b * self.sizes.widths.kv * min(positions, self.shape.compression_group_size) * self.dt
        return stored

    def hidden_bytes(self, tokens: int) -> float:
        return self.b * tokens * self.spec.hidden_size * self.dt

    @property
    def total_weight_bytes(self) -> float:
        return sum(self.stored[k] * self.count[k] for k in self.stored) * self.wb

    # -- time --------------------------------------------------------------------------
    def busy(self, kind: str, step: Step) -> dict:
        """Seconds each resource is busy for one layer of `kind` in one token step (all batches)."""
        hw, k = self.hw, self.k
        prefill = step.phase == "prefill"
        out = {r: Lin() for r in RESOURCES}
        # weights: once per layer per block step, CPU and disk shares cross the link; of a mixture, the
        # experts the block's tokens are routed to (counted as if each tier held its share of what is
        # read: the weight store puts a layer's own weights on the fastest tier first, so this
        # overstates reads from the slower tiers by at most the non-expert share of the layer)
        read = self.sizes.layers[kind].streamed_for(self.b * k * step.new_tokens)
        wbytes = read * self.wb
        out["h2d"] += off_device("w", wbytes / hw.h2d_bw)
        out["disk"] += Lin.var("w_disk", scale=wbytes / hw.disk_read_bw)
        if self.shape.compress_weight:  # dequantised on the device once per layer per block step
            out["device"] += self._dequant(read)
        # activations: decoders and the head read their input, embedding and decoders write theirs
        act = self.hidden_bytes(step.new_tokens) * k
        if kind != "embed":
            out["h2d"] += off_device("a", act / hw.h2d_bw)
            out["disk"] += Lin.var("a_disk", scale=act / hw.disk_read_bw)
        if kind != "head":
            out["d2h"] += off_device("a", act / hw.d2h_bw)
            out["disk"] += Lin.var("a_disk", scale=act / hw.disk_write_bw)
        # compute; the host thread pays a fixed cost per layer call and GPU batch (a block of many
        # small batches is launch-bound)
        merged = kind == "decoder" and not prefill and self.merged_decode
        out["cpu"] += (1 if merged else k) * hw.layer_call_s
        if kind == "head":  # logits of the last position only
            out["device"] += k * self._gemm(kind, 1, prefill)
        elif kind == "decoder":
            if merged:  # one call over the block's rows: the weights are read from memory once
                out["device"] += self._gemm(kind, step.new_tokens, prefill, rows=self.b * k)
            else:
                out["device"] += k * self._gemm(kind, step.new_tokens, prefill)
            for r, lin in self._attention(step).items():
                out[r] += lin
        return out

    def _gemm(self, kind: str, tokens: int, prefill: bool, rows: int | None = None) -> float:
        """A layer's matrices times `rows` sequences' tokens (a GPU batch's by default): bound by the FLOPs
        or by reading the weights."""
        hw, rows = self.hw, rows or self.b
        flops = 2 * rows * tokens * self.matmul[kind]
        read = self.sizes.layers[kind].streamed_for(rows * tokens) * self.dt
        if hw.gemv_bw:  # measured: bound by reading the weights (few rows) or by the large-matmul rate
            return max(flops / hw.gemm_flops_prefill, read / hw.gemv_bw)
        rate = hw.gemm_flops_prefill if prefill else hw.gemm_flops_decode
        return max(flops / rate, read / hw.device_mem_bw)  # small batches read-bound

    def _dequant(self, values: float) -> float:
        """Seconds to unpack this many 4-bit values on the device: at the measured rate, else one
        read of the packed and one write of the unpacked bytes."""
        if self.hw.dequant_rate:
            return values / self.hw.dequant_rate
        return values * (self.comp + self.dt) / self.hw.device_mem_bw

    def _attention(self, step: Step) -> dict:
        """Attention and the KV cache traffic of one decoder layer, all batches of the block."""
        hw, sp, k, b = self.hw, self.spec, self.k, self.b
        qk_dim = sp.num_heads * sp.head_dim
        out = {r: Lin() for r in RESOURCES}
        if step.phase == "prefill":
            s = step.new_tokens
            flops = 4 * b * qk_dim * s * s
            scores = b * sp.num_heads * s * s * (4 + self.dt)
            out["device"] += k * max(flops / hw.bmm_flops_prefill, 2 * scores / hw.device_mem_bw)
            new = self.cache_bytes(s) * k if self.n > 1 else 0.0  # the prompt's K and V go to their tiers
            out["d2h"] += off_device("c", new / hw.d2h_cache_bw)
            out["disk"] += Lin.var("c_disk", scale=new / hw.disk_write_cache_bw)
            return out
        L = step.context
        kv_read = (1 + self.shape.attn_sparsity) / 2  # sparse attention reads only the kept V rows
        flops = 2 * b * qk_dim * self.kept(L) * (1 + self.shape.attn_sparsity)
        read_dt = self.cache_bytes(L, self.dt) * kv_read
        device_time = max(flops / hw.bmm_flops_decode, read_dt / hw.device_mem_bw)
        if self.shape.compress_cache:
            device_time += self._dequant(self.cache_bytes(L, 1.0) * kv_read)
        old = self.cache_bytes(L - 1) * kv_read * k  # positions before this token
        new = self.cache_bytes(1) * k
        out["d2h"] += off_device("c", new / hw.d2h_cache_bw)
        out["disk"] += Lin.var("c_disk", scale=new / hw.disk_write_cache_bw + old / hw.disk_read_cache_bw
                               + 4 * k * hw.disk_cache_op_s)  # K and V: one read, one write per batch
        share = self.shape.cpu_attention  # of the CPU and disk rows: attended on the CPU (only q and out move)
        out["device"] += Lin(const=(1 - share) * k * device_time) + Lin.var("c_gpu", scale=share * k * device_time)
        out["h2d"] += off_device("c", (1 - share) * old / hw.h2d_bw)  # the rest cross the link
        if share:
            cpu_time = max(flops / hw.cpu_attn_flops, read_dt / (hw.cpu_attn_bw or hw.cpu_mem_bw))
            out["cpu"] += off_device("c", share * k * cpu_time)
            q_bytes = b * qk_dim * self.dt * k
            out["d2h"] += off_device("c", share * q_bytes / hw.d2h_bw)
            out["h2d"] += off_device("c", share * q_bytes / hw.h2d_bw)
        return out

    def merged(self, busy: dict) -> dict:
        """Resources that cannot overlap, as one. Without a GPU, compute and memcpy 'transfers'
        share the CPU. With CPU attention, each batch's device work waits for its attention on the
        host thread and that thread waits for the device's queries (a synchronous copy), so the
        device's time includes the host's (the copies still overlap with both)."""
        if self.hw.device == "cpu":
            cpu = busy["device"] + busy["cpu"] + busy["h2d"] + busy["d2h"]
            return {"cpu": cpu, "disk": busy["disk"]}
        if self.shape.cpu_attention:
            return {**busy, "device": busy["device"] + busy["cpu"]}
        return busy

    def time_terms(self) -> list[tuple[str, float, dict]]:
        """(phase, multiplicity, {resource: Lin seconds}) for each distinct layer step."""
        if self._terms is None:
            self._terms = [(step.phase, step.count * self.count[kind], self.merged(self.busy(kind, step)))
                           for step in self.steps for kind in ("embed", "decoder", "head")]
        return self._terms

    # -- memory ------------------------------------------------------------------------
    def memory_terms(self, weights_all_gpu: bool) -> dict:
        """{tier: [Lin bytes, ...]}: a tier's peak is the largest of its expressions (prefill, decode)."""
        sp, b, k, dt, s, n = self.spec, self.b, self.k, self.dt, self.s, self.n
        # the batch being computed and the one being fetched: the scheduler fetches a layer's next batch
        # before computing this one, inline when overlap is off
        nbuf = 2 if self.shape.overlap or self.k > 1 else 1
        # a single step (scoring, one new token) keeps no cache
        cache_all = self.cache_bytes(s + n) * k * sp.num_layers if n > 1 else 0.0
        act_all = self.hidden_bytes(s) * k
        resident = {t: Lin.var(f"w_{t}", scale=self.total_weight_bytes)
                    + Lin.var(f"c_{t}", scale=cache_all) + Lin.var(f"a_{t}", scale=act_all) for t in TIERS}

        layer_numel = [self.numel[kd] for kd in ("embed", "decoder", "head")]
        biggest = max(layer_numel) * self.wb

        def this_and_next(sizes):  # the layer computing and the one prefetched: the largest neighbours
            pairs = [sizes[0] + sizes[1], sizes[2] + sizes[0], sizes[1] + sizes[2]]
            return max(pairs + [2 * sizes[1]] if sp.num_layers > 1 else pairs)

        weight_buffers = 0.0 if weights_all_gpu else this_and_next(layer_numel) * self.wb
        if self.shape.compress_weight:  # both loads are dequantised as they arrive
            weight_buffers += this_and_next(layer_numel) * dt

        kv_width = self.sizes.widths.kv
        q_width = sp.num_heads * sp.head_dim
        logits = b * sp.vocab_size * (4 + dt)

        def working(tokens: int, keys: int, prefill: bool) -> float:
            hidden = (1 + nbuf) * self.hidden_bytes(tokens)  # input (+ next batch's), output
            mlp = b * tokens * self.sizes.widths.mlp * dt
            if not prefill and self.merged_decode:  # every batch's input, their concatenation, the output
                hidden, mlp = 3 * k * self.hidden_bytes(tokens), k * mlp
            # q, k, v, the output, grouped heads' expanded k and v, fp32 scores and a boolean mask
            expanded = 2 * q_width * keys if prefill and kv_width != q_width else 0
            attn = b * (tokens * (2 * q_width + 2 * kv_width) + expanded) * dt
            if prefill and self.shape.compress_cache:  # the prompt attends to its keys and values as stored
                attn += 2 * b * tokens * kv_width * dt
            attn += b * tokens * keys * (sp.num_heads * 4 + 1)
            return hidden + max(attn, mlp, logits)

        # writes waiting for their turn hold a batch's prompt keys and values, or its hidden states, on
        # a GPU the host runs ahead of (a CPU computes on the host thread itself, so its writes keep up)
        in_flight = WRITES_IN_FLIGHT * max(self.cache_bytes(s, dt, widest=True) if n > 1 else 0.0,
                                           self.hidden_bytes(s))
        dev_prefill = working(s, s, True) + (in_flight if self.shape.overlap and self.hw.device != "cpu" else 0.0)
        dev_decode = Lin(working(1, s + n, False)) if n > 1 else Lin()
        if n > 1 and self.shape.cpu_attention < 1:  # loaded CPU/disk rows
            loaded = nbuf * self.cache_bytes(s + n, widest=True)
            dev_decode += off_device("c", (1 - self.shape.cpu_attention) * loaded)
        if n > 1 and self.shape.compress_cache:  # dequantised: the batch and the one prefetched
            dev_decode += nbuf * self.cache_bytes(s + n, dt, widest=True)
        largest = max(self.numel.values()) if self.shape.compress_weight else 0.0  # values in one (de)quantization
        if self.shape.compress_cache:
            largest = max(largest, self.cache_bytes(s + n, 1.0, widest=True) / 2)  # a batch's keys (or values)
        dev_prefill += scratch_bytes(self.hw.device, largest)  # fp32 temporaries of a block of them
        dev_decode += scratch_bytes(self.hw.device, largest)
        gpu = [resident["gpu"] + weight_buffers + dev_prefill, resident["gpu"] + weight_buffers + dev_decode]

        # CPU staging: disk shares pass through CPU memory on their way to a GPU (a CPU device
        # reads them straight into the buffers counted above)
        staged = 0.0 if self.hw.device == "cpu" else float(nbuf)
        stage_w = Lin.var("w_disk", scale=staged * biggest)
        cpu_prefill = stage_w + Lin.var("a_disk", scale=staged * self.hidden_bytes(s))
        cpu_decode = stage_w + Lin.var("c_disk", scale=staged * self.cache_bytes(s + n, widest=True))
        if self.shape.cpu_attention:
            cpu_decode += b * sp.num_heads * (s + n) * 4 * nbuf  # scores on the CPU
        cpu = [resident["cpu"] + cpu_prefill, resident["cpu"] + cpu_decode]
        return {"gpu": gpu, "cpu": cpu, "disk": [resident["disk"]]}

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self, policy: Policy) -> "Estimate":
        x = fractions(policy)
        phase_time = {"prefill": 0.0, "decode": 0.0}
        busy = {"prefill": {}, "decode": {}}
        io_time = compute_time = 0.0
        for phase, mult, terms in self.time_terms():
            values = {r: lin.value(x) for r, lin in terms.items()}
            step = max(values.values()) if policy.overlap else sum(values.values())
            phase_time[phase] += mult * step
            for r, v in values.items():
                busy[phase][r] = busy[phase].get(r, 0.0) + mult * v
            io_time += mult * max([v for r, v in values.items() if r in IO_RESOURCES] or [0.0])
            compute_time += mult * max([v for r, v in values.items() if r not in IO_RESOURCES] or [0.0])
        all_gpu = policy.weights[0] >= 100.0 - 1e-9
        peak = {t: max(lin.value(x) for lin in lins) for t, lins in self.memory_terms(all_gpu).items()}
        return Estimate(policy=policy, prompt_len=self.s, gen_len=self.n, dtype_bytes=self.dt,
                        hardware=self.hw.name, prefill_time=phase_time["prefill"],
                        decode_time=phase_time["decode"], peak_memory=peak, busy=busy,
                        io_time=io_time, compute_time=compute_time)


@dataclass
class Estimate:
    policy: Policy
    prompt_len: int
    gen_len: int
    dtype_bytes: int
    hardware: str
    prefill_time: float  # seconds for the block's prefill
    decode_time: float  # seconds for its gen_len - 1 decode steps
    peak_memory: dict  # {tier: bytes}
    busy: dict = field(default_factory=dict)  # {phase: {resource: seconds busy}}
    io_time: float = 0.0  # the time if compute were free: the I/O roofline
    compute_time: float = 0.0  # the time if I/O were free

    @property
    def block_size(self) -> int:
        return self.policy.block_size

    @property
    def total_time(self) -> float:
        return self.prefill_time + self.decode_time

    @property
    def throughput(self) -> float:
        """Generated tokens per second: block_size * gen_len / (prefill + decode)."""
        return self.block_size * self.gen_len / self.total_time

    @property
    def io_bound_throughput(self) -> float:
        """The most any compute speed could give with this placement."""
        return self.block_size * self.gen_len / self.io_time if self.io_time > 0 else float("inf")

    def bottleneck(self, phase: str) -> str:
        busy = self.busy.get(phase) or {}
        return max(busy, key=busy.get) if busy else ""

    def to_dict(self) -> dict:
        return {
            "policy": self.policy.describe(), "prompt_len": self.prompt_len, "gen_len": self.gen_len,
            "block_size": self.block_size, "hardware": self.hardware,
            "throughput_tokens_per_s": self.throughput, "prefill_time_s": self.prefill_time,
            "decode_time_s": self.decode_time, "total_time_s": self.total_time,
            "io_bound_throughput_tokens_per_s": self.io_bound_throughput,
            "peak_memory_bytes": {t: int(v) for t, v in self.peak_memory.items()},
            "busy_s": self.busy, "bottleneck": {p: self.bottleneck(p) for p in self.busy},
        }

    def describe(self) -> str:
        mem = ", ".join(f"{t} {format_size(v)}" for t, v in self.peak_memory.items())
        io = f"I/O bound {self.io_bound_throughput:.3g} token/s" if self.io_time > 0 else "no streaming"
        return (f"{self.throughput:.3g} token/s (block {self.block_size}, prefill {self.prefill_time:.3g} s, "
                f"decode {self.decode_time:.3g} s; {io}); "
                f"peak {mem}; bottleneck prefill: {self.bottleneck('prefill')}, "
                f"decode: {self.bottleneck('decode')}")


def default_dtype_bytes(hardware: HardwareProfile) -> int:
    """The runtime computes in fp16 on a GPU and fp32 on a CPU."""
    return 4 if hardware.device == "cpu" else 2


def estimate(spec: ModelSpec, policy: Policy, prompt_len: int, gen_len: int,
             hardware: HardwareProfile | str = "t4", dtype_bytes: int | None = None) -> Estimate:
    """Predicted time, throughput and peak memory per tier of one block under `policy`."""
    hw = load_profile(hardware)
    return BlockModel(spec, policy, prompt_len, gen_len, hw, dtype_bytes or default_dtype_bytes(hw)).evaluate(policy)
