"""One benchmark run: the same random prompts through each system under one memory budget.

Measurement, per system at its batch b (see search.py for how b is chosen):
  warm-up   one generate of 2 new tokens at the full batch (a decode step, so the KV cache is
            allocated once: pinning ours' 48 GB host cache for OPT-30B took most of the first run's
            time on an H200), not recorded; ours on CUDA generates the timed run's n tokens, because
            it keeps its page-locked host buffers by size and the run's cache is a few positions longer
  then `repeat` rounds of, for each system in turn,
    prefill   a generate of 1 new token: P (skipped for a system that times its own steps, whose runs
              give P as their first step)
    run       right after it, a generate of n = gen_len tokens (or cut_gen_len; decode is projected): T
With alternation (default on a CPU) the systems take turns every round, so a slow spell of a shared
machine hits all of them, and each run is paired with the prefill measured just before it. Per
round: decode D = (T - P) * (gen_len - 1) / (n - 1) and throughput = b * gen_len / (P + D)
(generated tokens over prefill + decode time, as in the paper); reported: medians over rounds.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import torch

from flexgen_core import Policy
from flexgen_core.planning.machine import cpu_name
from flexgen_core.units import format_size, parse_size

from . import hf_models, search, systems

ALL_SYSTEMS = ("flexgen", "flexgen-c", "accelerate", "hf", "flexgen-0.1.8")


@dataclass
class BenchConfig:
    model: str
    dummy_weights: bool = False
    prompt_len: int = 512
    gen_len: int = 32
    cut_gen_len: int | None = None
    gpu_mem: int | str | None = None
    cpu_mem: int | str | None = None
    disk: int | str | None = None
    systems: tuple = ("flexgen", "accelerate", "hf")
    policy: str = "auto"  # "auto" (planner) or six FlexGen --percent numbers "w_gpu,w_cpu,c_gpu,c_cpu,a_gpu,a_cpu"
    gpu_batch_size: int | None = None
    num_gpu_batches: int | None = None
    cpu_attention: float | None = None  # share of the off-device cache attended on the CPU (None: planner's)
    max_batch: int = 64
    hf_batch: int | None = None  # None: the same batch as ours
    repeat: int = 3
    out: str = "results/bench/run.json"
    offload_dir: str | None = None
    hardware: str = "measured"  # "measured", a preset name or a profile JSON
    device: str | None = None
    dtype: str | None = None
    cold_baseline_reads: bool = True
    alternate: bool | None = None  # None: on a CPU yes; on CUDA no (both models would share the cap)
    cap_gpu: bool = False  # torch.cuda.set_per_process_memory_fraction(gpu_mem / total)
    flexgen018_args: str | None = None
    hf_cache_dir: str | None = None
    seed: int = 0
    plot: bool = True
    dry_run: bool = False
    command: str = ""

    def validate(self):
        unknown = [s for s in self.systems if s not in ALL_SYSTEMS]
        if unknown or not self.systems:
            raise ValueError(f"unknown systems {unknown or '(none)'}; choose from {', '.join(ALL_SYSTEMS)}")
        for name in ("prompt_len", "gen_len", "repeat", "max_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.cut_gen_len is not None and not 2 <= self.cut_gen_len <= self.gen_len:
            raise ValueError("--cut-gen-len must be between 2 and --gen-len")
        if self.policy != "auto":
            percent_policy(self.policy, 1, 1)  # raises on a bad spec
        for name in ("gpu_mem", "cpu_mem", "disk"):
            if getattr(self, name) is not None:
                parse_size(getattr(self, name))


def percent_policy(text: str, gpu_batch_size: int, num_gpu_batches: int) -> Policy:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return Policy.from_percent([float(p) for p in parts], gpu_batch_size=gpu_batch_size,
                                   num_gpu_batches=num_gpu_batches)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--policy must be 'auto' or six percentages w_gpu,w_cpu,c_gpu,c_cpu,a_gpu,a_cpu: {e}") from e


def machine() -> str:
    cpu = cpu_name()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {format_size(mem)} RAM, {gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__}")


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def random_prompts(n: int, prompt_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids of exactly `prompt_len`, away from the low ids where special tokens live."""
    gen = torch.Generator().manual_seed(seed)
    low = min(100, vocab_size // 4)
    return torch.randint(low, vocab_size, (n, prompt_len), generator=gen).tolist()


@dataclass
class Entry:
    """One system's slot in the run: how its batch was chosen, then its measurements."""

    name: str
    batch: int | None = None
    how: str = ""
    skipped: str | None = None
    details: dict = field(default_factory=dict)
    prefill_runs: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    system: object = None


@dataclass
class OursPlan:
    """How one of our systems runs: its policy, the planner's plan (None for a given policy) and the
    cost model's estimate of it on the run's hardware profile."""

    policy: Policy
    plan: object
    estimate: object
    how: str


class Bench:
    def __init__(self, cfg: BenchConfig, log=print):
        cfg.validate()
        self.cfg, self.log = cfg, log
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available() and not cfg.dry_run:
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        from flexgen_core.runtime.llm import resolve_dtype

        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.dt = torch.empty((), dtype=self.dtype).element_size()
        self.spec, self.path = hf_models.resolve_model(cfg.model, cfg.dummy_weights)
        self.offload_dir = cfg.offload_dir or tempfile.mkdtemp(prefix="flexgen-bench-")
        os.makedirs(self.offload_dir, exist_ok=True)
        # A directory the bench made holds ours' disk weights, accelerate's offload and the profile's
        # files (tens of GB for OPT-30B): removed when the run ends, or at exit if it never does.
        # A directory the user names is kept: ours reuses the weights it stored there.
        self._remove_own_dir = weakref.finalize(self, shutil.rmtree, self.offload_dir, True) \
            if cfg.offload_dir is None else None
        self.budget = self._budget()
        self.alternate = cfg.alternate if cfg.alternate is not None else self.device.type == "cpu"
        self.entries: dict[str, Entry] = {}
        self.ours: dict[str, OursPlan] = {}  # by system; "flexgen" is planned even when not run: it sizes hf's batch
        self.profile = None

    @property
    def plan(self):
        return self.ours["flexgen"].plan if "flexgen" in self.ours else None

    @property
    def estimate(self):
        return self.ours["flexgen"].estimate if "flexgen" in self.ours else None

    # -- setup ------------------------------------------------------------------------------
    def _budget(self) -> search.Budget:
        cfg = self.cfg
        if self.device.type == "cuda" and torch.cuda.is_available():
            default_gpu = torch.cuda.get_device_properties(self.device).total_memory
        else:
            default_gpu = None
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            ram = 16 << 30
        gpu = parse_size(cfg.gpu_mem) if cfg.gpu_mem is not None else (default_gpu or ram // 4)
        cpu = parse_size(cfg.cpu_mem) if cfg.cpu_mem is not None else ram // 4
        disk = parse_size(cfg.disk) if cfg.disk is not None else _free_disk(self.offload_dir)
        return search.Budget(gpu=gpu, cpu=cpu, disk=disk, device=self.device.type)

    def _profile(self):
        from flexgen_core.planning.hardware import load_profile
        from flexgen_core.profiler import measure_profile

        hw = self.cfg.hardware
        if hw != "measured":
            return load_profile(hw)
        if self.cfg.dry_run:  # nothing is measured in a dry run: the closest preset stands in
            return load_profile("cpu" if self.device.type == "cpu" else "h100")
        self.log(f"measuring the hardware profile on {self.offload_dir} ...")
        return measure_profile(self.offload_dir, self.device.type, name="measured", dtype=self.dtype)

    def _plan_ours(self, compressed: bool) -> OursPlan:
        cfg, spec = self.cfg, self.spec
        from flexgen_core.planning.cost_model import estimate
        from flexgen_core.planning.planner import plan_policy

        if cfg.policy == "auto":
            plan = plan_policy(spec, cfg.prompt_len, cfg.gen_len, self.budget.planner_memory(), self.profile,
                               dtype_bytes=self.dt, max_block_size=cfg.max_batch, cpu_attention=cfg.cpu_attention,
                               compress_weight=compressed, compress_cache=compressed)
            policy, how = plan.policy, f"planner (max block {cfg.max_batch}); binding: {plan.binding}"
        else:
            plan = None
            policy = percent_policy(cfg.policy, cfg.gpu_batch_size or 8, cfg.num_gpu_batches or 1)
            policy = policy.with_(cpu_attention=cfg.cpu_attention or 0.0, compress_weight=compressed,
                                  compress_cache=compressed)
            how = "given policy"
        est = estimate(spec, policy, cfg.prompt_len, cfg.gen_len, self.profile, self.dt)
        return OursPlan(policy, plan, est, how)

    def choose(self):
        """Every system's batch under the budget (no model is loaded)."""
        cfg, spec = self.cfg, self.spec
        self.profile = self._profile()
        from flexgen_core.planning.planner import InfeasibleBudget

        self.ours = {}
        for name, compressed in systems.OURS.items():
            if name != "flexgen" and name not in cfg.systems:
                continue
            try:
                self.ours[name] = o = self._plan_ours(compressed)
            except InfeasibleBudget as err:  # that system's result; the others still run
                if name in cfg.systems:
                    self.entries[name] = Entry(name, None, "planner", skipped=str(err))
                continue
            if name in cfg.systems:
                self.entries[name] = Entry(name, o.policy.block_size, o.how, details={
                    "policy": o.policy.describe(),
                    "weights_percent": dict(zip(("gpu", "cpu", "disk"), o.policy.weights))})
        ours_batch = self.ours["flexgen"].policy.block_size if "flexgen" in self.ours else None
        if "accelerate" in cfg.systems:
            c = search.choose_accelerate(spec, self.budget, cfg.prompt_len, cfg.gen_len, self.dt, cfg.max_batch)
            e = Entry("accelerate", c.batch, c.rule, details={"max_memory": c.max_memory, "tried": c.tried})
            if c.batch is None:
                e.skipped = "no batch fits the budget: " + (c.tried[-1][1] if c.tried else "")
            self.entries["accelerate"] = e
        if "hf" in cfg.systems:
            b = cfg.hf_batch or (ours_batch if "flexgen" in cfg.systems and ours_batch else cfg.max_batch)
            ok, why = search.hf_fits(spec, b, self.budget, cfg.prompt_len, cfg.gen_len, self.dt)
            how = "same batch as ours" if not cfg.hf_batch else "given batch"
            self.entries["hf"] = Entry("hf", b, how, None if ok else f"not resident: {why}", details={
                "fit": why, "weights_percent": {"gpu": 100.0, "cpu": 0.0, "disk": 0.0}})  # compute-device memory
        if "flexgen-0.1.8" in cfg.systems:
            why = systems.flexgen018_available()
            e = Entry("flexgen-0.1.8", None, "its benchmark suite's policy")
            try:
                args = cfg.flexgen018_args or systems.FLEXGEN018_SUITE.get(spec.name)
                if args is None:
                    raise ValueError(f"no suite policy for {spec.name}; pass --flexgen018-args")
                e.details = {"args": args}
                e.batch = int(systems._flag(args.split(), "--gpu-batch-size", 4)) * int(
                    systems._flag(args.split(), "--num-gpu-batches", 1))
            except ValueError as err:
                why = why or str(err)
            e.skipped = why
            self.entries["flexgen-0.1.8"] = e
        for e in self.entries.values():
            self.log(f"  {e.name:14s} batch {e.batch}  ({e.how})" + (f"  SKIPPED: {e.skipped}" if e.skipped else ""))
        for o in self.ours.values():
            if o.plan is not None:
                self.log("\n".join("  " + line for line in o.plan.describe().splitlines()))

    # -- building and running ------------------------------------------------------------------
    def _hf_checkpoint(self) -> str | None:
        if self.path is not None:
            return self.path
        from flexgen_core.model.store import cache_root

        cache = self.cfg.hf_cache_dir or str(cache_root() / "bench-hf")
        if self.device.type == "cuda":
            return None  # built in memory: a 30B fp16 checkpoint would not fit the box's disk next to ours
        self.log(f"  dummy HF checkpoint for {self.spec.name} under {cache} (built once)")
        return hf_models.dummy_checkpoint(self.spec, self.dtype, cache)

    def _build(self, e: Entry):
        cfg, pad = self.cfg, self.spec.pad_token_id if self.spec.pad_token_id is not None else 0
        t0 = time.perf_counter()
        if e.name in systems.OURS:
            e.system = systems.Ours(self.path or cfg.model, cfg.dummy_weights, self.ours[e.name].policy,
                                    self.budget.planner_memory(), self.device.type, self.dtype, self.offload_dir,
                                    name=e.name)
        elif e.name == "accelerate":
            e.system = systems.AccelerateOffload(self.spec, self._hf_checkpoint(), e.batch, e.details["max_memory"],
                                                 self.dtype, self.device.type, self.offload_dir, pad,
                                                 cold_reads=cfg.cold_baseline_reads)
            e.details.update(e.system.describe())
        elif e.name == "hf":
            ckpt = self._hf_checkpoint()
            if ckpt is None:
                raise ValueError("hf generate with dummy weights on CUDA is not supported (no checkpoint)")
            e.system = systems.HFGenerate(ckpt, e.batch, self.dtype, self.device.type, pad)
        elif e.name == "flexgen-0.1.8":
            frac = self._gpu_fraction()
            e.system = systems.FlexGen018(self.spec, cfg.flexgen018_args, self.offload_dir, frac, cfg.prompt_len,
                                          cfg.gen_len, cfg.cut_gen_len)
        e.details["load_s"] = round(time.perf_counter() - t0, 2)

    def _build_fitting(self, e: Entry, prompts) -> bool:
        """Build and warm up. On CUDA a baseline that runs out of memory is rebuilt at the next smaller
        candidate batch (the out-of-memory search); False when none fits."""
        cfg = self.cfg
        oom = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
        search_oom = self.device.type == "cuda" and e.name in ("accelerate", "hf")
        batches = [b for b in search.candidate_batches(cfg.max_batch) if b <= e.batch] if search_oom else [e.batch]
        for b in batches:
            if e.name == "accelerate" and b != e.batch:
                mm, why = search.accelerate_max_memory(self.spec, b, self.budget, cfg.prompt_len, cfg.gen_len, self.dt)
                if mm is None:
                    continue
                e.details["max_memory"] = mm
            e.batch = b
            try:
                self._build(e)
                self._phase(e, "warmup", prompts)
                return True
            except oom:
                e.details.setdefault("tried", []).append((b, "CUDA out of memory"))
                self.log(f"    {e.name}: out of memory at batch {b}")
                if e.system is not None:
                    e.system.close()
                    e.system = None
                release_cached_memory()
        e.skipped = "out of memory at every candidate batch"
        return False

    def _save_partial(self, started):
        """After each system in a sequential run: what is done survives a time limit."""
        if self.cfg.out:
            try:
                save(self.result(started, partial=True), self.cfg.out, plot=False)
            except (OSError, ValueError) as err:  # a report, not a reason to stop measuring
                self.log(f"  could not save partial results: {err}")

    def _gpu_fraction(self) -> float | None:
        if not (self.cfg.cap_gpu and self.device.type == "cuda"):
            return None
        total = torch.cuda.get_device_properties(self.device).total_memory
        return min(1.0, self.budget.gpu / total)

    def _phase(self, e: Entry, phase: str, prompts):
        n_run = self.cfg.cut_gen_len or self.cfg.gen_len
        sysm = e.system
        if e.name == "flexgen-0.1.8":  # one subprocess does its own warm-up, prefill and decode
            if phase == "run":
                r = sysm.run()
                e.prefill_runs.append(r["prefill_latency"])
                e.runs.append(r["prefill_latency"] + r["decode_latency"])
            return
        if phase == "prefill" and (getattr(sysm, "last_details", None) or {}).get("step_seconds"):
            # it times its own steps, and its runs are charged the prefill they timed (see timing): a
            # prefill-only run would repeat the whole block's prefill for nothing (256 OLMoE sequences
            # on a 2-core CPU: 9 minutes)
            return
        warmup = n_run if sysm.warm_to_run_length else min(2, n_run)
        new_tokens = {"run": n_run, "warmup": warmup}.get(phase, 1)
        seconds = sysm.generate(prompts[: e.batch], new_tokens)
        if phase == "warmup" and hasattr(sysm, "rss"):
            sysm.rss.peak_delta = 0  # first touches of mapped weights are loading, not working memory
            sysm.rss.disk_read = 0
        if phase == "run" and hasattr(sysm, "rss"):
            e.details.setdefault("disk_read_bytes_per_run", []).append(sysm.rss.last_disk_read)
        if phase in ("run", "prefill") and getattr(sysm, "last_details", None):
            e.details.setdefault(f"{phase}_details", []).append(sysm.last_details)
        if phase == "prefill":
            e.prefill_runs.append(seconds)
        elif phase == "run":
            e.runs.append(seconds)
        # (warm-up: the full batch and a decode step, so first-use costs such as allocating and pinning
        # the cache, and opening files, are paid there)
        self.log(f"    {e.name:14s} b={e.batch:<4d} {phase:8s} {seconds:8.2f} s   load avg {load_avg()}")

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict:
        cfg = self.cfg
        started = datetime.now(timezone.utc)
        self.load_start = load_avg()
        if cfg.cap_gpu and self.device.type == "cuda" and not cfg.dry_run:
            torch.cuda.set_per_process_memory_fraction(self._gpu_fraction(), self.device.index or 0)
        self.log(f"bench {self.spec.name}: prompt {cfg.prompt_len}, gen {cfg.gen_len}"
                 + (f" (decode cut to {cfg.cut_gen_len} steps, projected)" if cfg.cut_gen_len else "")
                 + f", {str(self.dtype).split('.')[-1]}, budget gpu {format_size(self.budget.gpu)} / cpu "
                 f"{format_size(self.budget.cpu)} / disk {format_size(self.budget.disk)} on {self.device}")
        self.choose()
        # in the order --systems names them: with a time limit, the ones named first finish
        active = [self.entries[n] for n in dict.fromkeys(cfg.systems) if n in self.entries and not self.entries[n].skipped]
        if cfg.dry_run:
            return self.result(started, dry_run=True)
        batches = [e.batch for e in active] or [1]
        prompts = random_prompts(max(batches), cfg.prompt_len, self.spec.vocab_size, cfg.seed)
        phases = ["warmup"] + ["prefill", "run"] * cfg.repeat
        try:
            if self.alternate:
                for e in active:
                    self._build(e)
                for e in active:
                    self._phase(e, "warmup", prompts)
                for _ in range(cfg.repeat):  # each system's prefill and run back to back, systems in turn
                    for e in active:
                        self._phase(e, "prefill", prompts)
                        self._phase(e, "run", prompts)
                for e in active:
                    e.details["peak_memory"] = e.system.peak_memory()
            else:
                oom = getattr(torch.cuda, "OutOfMemoryError", MemoryError)
                for e in active:
                    try:
                        if not self._build_fitting(e, prompts):
                            continue
                        for phase in phases[1:]:
                            self._phase(e, phase, prompts)
                        e.details["peak_memory"] = e.system.peak_memory()
                    except oom as err:  # one system's failure; the others still run
                        e.skipped = f"out of memory in a timed run at batch {e.batch}: {str(err).splitlines()[0]}"
                        e.runs, e.prefill_runs = [], []
                        self.log(f"    {e.name}: {e.skipped}")
                    if e.system is not None:
                        e.system.close()
                        e.system = None
                    self._save_partial(started)
                    if self.device.type == "cuda":
                        release_cached_memory()
                        torch.cuda.reset_peak_memory_stats(self.device)
        finally:
            for e in active:
                if e.system is not None:
                    e.system.close()
                    e.system = None
        return self.result(started)

    def close(self):
        """Remove the offload directory if the bench made it."""
        if self._remove_own_dir is not None:
            self._remove_own_dir()

    # -- results ---------------------------------------------------------------------------
    def _summary(self, e: Entry) -> dict:
        cfg = self.cfg
        n_run, g = cfg.cut_gen_len or cfg.gen_len, cfg.gen_len
        out = {"system": e.name, "batch": e.batch, "batch_rule": e.how, "skipped": e.skipped, **e.details}
        out.pop("peak_memory", None)
        out["peak_memory_bytes"] = e.details.get("peak_memory")
        if e.skipped or not e.runs:
            return out
        out.update(timing(e.name, e.batch, e.prefill_runs, e.runs, cfg.gen_len, n_run, in_run_prefills(out)))
        out["decode_projected"] = bool(cfg.cut_gen_len and cfg.cut_gen_len < g)
        return out

    def result(self, started, dry_run=False, partial=False) -> dict:
        cfg = self.cfg
        rows = [self._summary(e) for e in self.entries.values()]
        for r in rows:
            if r["system"] in self.ours and r.get("throughput_tokens_per_s"):
                est = self.ours[r["system"]].estimate
                r["predicted_throughput_tokens_per_s"] = est.throughput
                r["io_bound_throughput_tokens_per_s"] = est.io_bound_throughput if est.io_time > 0 else None
                if r["system"] != "flexgen":  # the exact system's are the run's top-level plan and estimate
                    plan = self.ours[r["system"]].plan
                    r["plan"], r["estimate"] = plan.to_dict() if plan else None, est.to_dict()
        ratios = ratios_of(rows)
        weights_total = hf_models.weight_bytes(self.spec, self.dt)
        return {
            "model": self.spec.name, "checkpoint": self.path or "dummy weights (built-in config)",
            "dummy_weights": self.path is None, "dtype": str(self.dtype).split(".")[-1],
            "device": str(self.device), "prompt_len": cfg.prompt_len, "gen_len": cfg.gen_len,
            "cut_gen_len": cfg.cut_gen_len, "repeat": cfg.repeat, "max_batch": cfg.max_batch,
            "budget_bytes": self.budget.as_memory(), "weight_bytes": weights_total,
            "alternating": self.alternate, "baseline_disk_reads":
                "cold: page cache dropped after each disk-resident module and before each run"
                if cfg.cold_baseline_reads else "through the page cache",
            "ours_disk_reads": "read(2) then posix_fadvise DONTNEED on every read (flexgen_core.memory.tiers.DiskArray)",
            "hardware_profile": self.profile.to_dict() if self.profile else None,
            "plan": self.plan.to_dict() if self.plan else None,
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "systems": rows, "ratios": ratios, "dry_run": dry_run, "partial": partial,
            "command": cfg.command, "machine": machine(),
            "load_avg_start": getattr(self, "load_start", None), "load_avg_end": load_avg(),
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "wall_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
            "config": {k: v for k, v in asdict(cfg).items() if k != "command"},
        }


def timing(system: str, batch: int, prefill_runs: list, runs: list, gen_len: int, n_run: int,
           in_run_prefills: list | None = None) -> dict:
    """Prefill, decode and throughput from the raw seconds. Run i is paired with prefill i (measured
    just before it); with fewer prefills than runs, each run uses their median. A system that times
    its own steps gives each run's prefill as it ran inside that run (`in_run_prefills`): a
    prefill-only run of ours does not write the KV cache, which a run does, so with the cache off the
    device T - P charged that write to every projected decode step (OLMoE batch 64, cache on disk:
    227 s in the run against 186 s alone, +41 s x 31 / 3 of decode)."""
    g, per_run = gen_len, []
    in_run = in_run_prefills is not None and len(in_run_prefills) >= len(runs)
    paired = in_run or len(prefill_runs) >= len(runs)
    prefills = in_run_prefills if in_run else prefill_runs if paired else [statistics.median(prefill_runs)] * len(runs)
    for p, t in zip(prefills, runs):
        if system == "flexgen-0.1.8":  # FlexGen projects its own decode when cut
            decode = t - p
        else:
            decode = max(t - p, 0.0) * (g - 1) / max(n_run - 1, 1) if g > 1 else 0.0
        per_run.append((p, decode, batch * g / (p + decode), t < p))
    prefill = statistics.median(r[0] for r in per_run)
    decode = statistics.median(r[1] for r in per_run)
    return {"prefill_s": prefill, "decode_s": decode, "total_s": prefill + decode, "latency_s": prefill + decode,
            "throughput_tokens_per_s": statistics.median(r[2] for r in per_run),
            "throughput_runs": [r[2] for r in per_run], "decode_clamped_runs": sum(r[3] for r in per_run),
            "prefill_paired": paired, "prefill_from": "the run's own first step" if in_run else "prefill-only runs",
            "run_seconds": list(runs), "prefill_seconds": list(prefill_runs),
            **({"in_run_prefill_seconds": list(in_run_prefills)} if in_run else {})}


def in_run_prefills(row: dict) -> list | None:
    """Each timed run's prefill seconds as the system timed them inside the run (the first step of
    each of its blocks), where it reports its steps; None otherwise."""
    details = row.get("run_details") or []
    if not details or not all(d.get("step_seconds") for d in details):
        return None
    return [sum(block[0] for block in d["step_seconds"] if block) for d in details]


def resummarize(result: dict) -> dict:
    """Recompute the timing fields and ratios of a saved result from its raw seconds (for results
    written before a change of `timing`)."""
    n_run = result.get("cut_gen_len") or result["gen_len"]
    for r in result["systems"]:
        if r.get("run_seconds"):
            r.update(timing(r["system"], r["batch"], r["prefill_seconds"], r["run_seconds"], result["gen_len"], n_run,
                            in_run_prefills(r)))
    result["ratios"] = ratios_of(result["systems"])
    return result


def ratios_of(rows: list[dict]) -> dict:
    """Each of our systems' throughput over each baseline's (ours_vs_baseline), and each of ours as a
    percentage of its cost model's prediction and I/O bound (set on its row)."""
    ratios = {}
    for ours in rows:
        tp = ours.get("throughput_tokens_per_s")
        if ours["system"] not in systems.OURS or not tp:
            continue
        for r in rows:
            if r["system"] not in systems.OURS and r.get("throughput_tokens_per_s"):
                ratios[f"{ours['system']}_vs_{r['system']}"] = tp / r["throughput_tokens_per_s"]
        if ours.get("predicted_throughput_tokens_per_s"):
            ours["percent_of_predicted"] = 100 * tp / ours["predicted_throughput_tokens_per_s"]
        if ours.get("io_bound_throughput_tokens_per_s"):
            ours["percent_of_io_bound"] = 100 * tp / ours["io_bound_throughput_tokens_per_s"]
    return ratios


def _free_disk(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def table(result: dict) -> str:
    """Markdown rows for one run."""
    lines = ["| system | batch | throughput (tok/s) | prefill (s) | decode (s) | ours vs it | weights % gpu/cpu/disk "
             "| peak memory gpu / cpu / disk | read from disk per run | notes |", "|---" * 10 + "|"]
    ours = [r for r in result["systems"] if r["system"] in systems.OURS and r.get("throughput_tokens_per_s")]
    for r in result["systems"]:
        if r.get("skipped") or "throughput_tokens_per_s" not in r:
            lines.append(f"| {r['system']} | {r.get('batch') or '-'} | - | - | - | - | - | - | - | "
                         f"{r.get('skipped') or 'not run'} |")
            continue
        tp = r["throughput_tokens_per_s"]
        if r["system"] in systems.OURS:
            vs = "-"
        elif len(ours) == 1:
            vs = f"{ours[0]['throughput_tokens_per_s'] / tp:.2f}x"
        else:
            vs = ", ".join(f"{o['system']} {o['throughput_tokens_per_s'] / tp:.2f}x" for o in ours) or "-"
        mem = r.get("peak_memory_bytes") or {}
        peak = " / ".join(format_size(mem.get(t, 0)) for t in ("gpu", "cpu", "disk"))
        wp = r.get("weights_percent", {})
        w = "/".join(f"{wp.get(t, 0):g}" for t in ("gpu", "cpu", "disk")) if wp else ""
        if r["system"] in systems.OURS:
            note = r.get("policy", "")
            if r.get("percent_of_io_bound") is not None:
                note += f"; {r['percent_of_io_bound']:.0f}% of I/O bound"
            if r.get("percent_of_predicted") is not None:
                note += f"; {r['percent_of_predicted']:.0f}% of predicted"
        elif r["system"] == "accelerate":
            note = r.get("disk_reads", "")
        elif r["system"] == "hf":
            w, note = w or "100/0/0", "resident"
        else:
            note = r.get("args", "")
        spread = ", ".join(f"{x:.3g}" for x in r.get("throughput_runs", []))
        reads = r.get("disk_read_bytes_per_run")
        read = format_size(statistics.median(reads)) if reads else "-"
        lines.append(f"| {r['system']} | {r['batch']} | {tp:.3g} ({spread}) | {r['prefill_s']:.2f} | "
                     f"{r['decode_s']:.2f} | {vs} | {w} | {peak} | {read} | {note} |")
    return "\n".join(lines)


def save(result: dict, out: str, plot: bool = True) -> list[str]:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")
    written = [out]
    if plot and not result.get("dry_run"):
        from .plot import plot_run

        png = os.path.splitext(out)[0] + ".png"
        plot_run([result], png)
        written.append(png)
    return written


def main_run(cfg: BenchConfig, log=None) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    bench = Bench(cfg, log)
    result = bench.run()
    return result


def release_cached_memory():
    """Give the memory torch caches back after a system is closed: the next system (FlexGen 0.1.8
    runs in a subprocess) needs it. Pinned host buffers stay cached by torch until told otherwise,
    and OPT-30B pins ~50 GB of them."""
    gc.collect()
    torch.cuda.empty_cache()
    if hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()
