"""The systems a benchmark compares. Each one loads a model under the run's memory budget at one
batch size, generates exactly `n` tokens for a list of equal-length prompts, and reports its memory.

- Ours (`flexgen`): flexgen_core.LLM with the planner's policy (or a given one); `flexgen-c` the same
  with 4-bit group-wise weights and KV cache (the paper's "FlexGen (c)"; lossy).
- `accelerate`: HF `from_pretrained(device_map=..., offload_folder=...)` with the device map from
  accelerate's `infer_auto_device_map(max_memory=...)`; weights that do not fit the budget go to disk
  and are reloaded by accelerate's hooks at every forward.
- `hf`: plain HF `generate` with the whole model resident (only when it fits).
- `flexgen-0.1.8`: the original FlexGen from PyPI, in a subprocess (CUDA only, OPT only).
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from flexgen_core import LLM, SamplingParams

from . import hf_models
from .memory import PeakRSS, drop_page_cache

# Ours as two systems: exact (the compute dtype end to end, what every parity test checks) and, as the
# paper's "FlexGen (c)", with 4-bit group-wise weights and KV cache: lossy, so reported beside the
# exact one, never instead of it. Name -> compressed.
OURS = {"flexgen": False, "flexgen-c": True}

TIERS = ("gpu", "cpu", "disk")


class System:
    name = ""
    batch = 0
    warm_to_run_length = False  # whether its warm-up must generate the timed run's tokens (see Ours)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Seconds for one generate call of exactly `new_tokens` tokens per prompt."""
        raise NotImplementedError

    def peak_memory(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {}

    def close(self):
        pass


# -- ours ---------------------------------------------------------------------------------------


class Ours(System):
    name = "flexgen"

    def __init__(self, model: str, dummy: bool, policy, memory: dict, device: str, dtype: torch.dtype,
                 offload_dir: str, name: str = "flexgen"):
        self.name, self.policy = name, policy
        self.llm = LLM.from_pretrained(model, policy=policy, device=device, dtype=dtype, offload_dir=offload_dir,
                                       dummy_weights=dummy, memory=memory)
        self.batch = policy.block_size
        # on CUDA the CPU tier's page-locked buffers are kept by size and reused: a warm-up of the timed
        # run's length allocates (and locks) the KV cache the timed runs will use
        self.warm_to_run_length = torch.device(device).type == "cuda"
        self.rss = PeakRSS()
        self.last_details: dict = {}  # of the last generate: its token steps' seconds, allocator retries

    def generate(self, prompts, new_tokens):
        retries, experts = _alloc_retries(), self._experts_read()
        with self.rss.measure():
            start = time.perf_counter()
            outs = self.llm.generate(prompts, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True,
                                                             logprobs=False))
            seconds = time.perf_counter() - start
        if any(len(o.outputs[0].token_ids) != new_tokens for o in outs):
            raise RuntimeError("flexgen generated a different number of tokens than asked")
        # where the time went, step by step: a slow step (or the allocator freeing its cache to retry a
        # failed allocation, which synchronises the device) shows here, not only in the total
        self.last_details = {"step_seconds": [[round(x, 4) for x in block]
                                              for block in self.llm.last_run.get("step_seconds", [])]}
        if retries is not None:
            self.last_details["alloc_retries"] = _alloc_retries() - retries
        if experts is not None:  # a mixture: how many experts (and bytes) this run read off their tiers
            after = self._experts_read()
            self.last_details["experts_read"] = {k: after[k] - experts[k] for k in after}
        return seconds

    def _experts_read(self) -> dict | None:
        return self.llm.memory_stats().get("experts", {}).get("read")

    def peak_memory(self):
        stats = self.llm.memory_stats()
        out = {t: int(stats["peak"][t]) for t in TIERS}
        for key in ("device_peak_allocated", "host_peak_locked"):
            if key in stats:
                out[key] = int(stats[key])
        out["disk_bytes_read_tiers"] = int(stats["read"]["disk"])  # the runtime's own count, since loading
        out["disk_bytes_read"] = self.rss.disk_read  # from /proc/self/io during measured runs
        out["rss_rise"] = self.rss.peak_delta
        return out

    def describe(self):
        return {"policy": self.policy.describe()}

    def close(self):
        self.llm.close()


def _alloc_retries() -> int | None:
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_stats().get("num_alloc_retries", 0))


# -- HF generate and accelerate -------------------------------------------------------------------


class _HFBase(System):
    def __init__(self, pad_id: int, device: str):
        self.pad_id, self.device = pad_id, torch.device(device)
        self.rss = PeakRSS()
        self.model = None

    def _inputs(self, prompts):
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        return ids, torch.ones_like(ids)

    def _before_run(self):
        pass

    def generate(self, prompts, new_tokens):
        ids, mask = self._inputs(prompts)
        self._before_run()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        with self.rss.measure():
            start = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=self.pad_id,
                                          use_cache=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(f"{self.name} generated {out.shape[1] - ids.shape[1]} tokens, asked {new_tokens}")
        return seconds


class HFGenerate(_HFBase):
    name = "hf"

    def __init__(self, checkpoint: str, batch: int, dtype: torch.dtype, device: str, pad_id: int):
        from transformers import AutoModelForCausalLM

        super().__init__(pad_id, device)
        self.batch = batch
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(self.device).eval()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def peak_memory(self):
        if self.device.type == "cuda":
            return {"gpu": int(torch.cuda.max_memory_allocated(self.device)), "cpu": 0, "disk": 0}
        return {"gpu": 0, "cpu": self.weight_bytes + self.rss.peak_delta, "disk": 0, "rss_rise": self.rss.peak_delta}

    def describe(self):
        return {"weights": "all resident on the compute device"}

    def close(self):
        self.model = None


class AccelerateOffload(_HFBase):
    """HF accelerate's big-model inference: `infer_auto_device_map(max_memory=...)` fills the budget's
    memory in order (GPU, then CPU) and sends the rest to disk (the checkpoint's safetensors, or
    `offload_folder`); hooks load a disk-resident layer's weights before its forward and drop them after.

    Page cache: accelerate reads disk weights through the page cache (safetensors / numpy mmap), so
    on a machine with spare RAM its "disk" reads would come from memory the budget says is not
    there. With `cold_reads` (default) the harness evicts the offloaded files from the page cache
    (posix_fadvise DONTNEED) after every disk-resident module's forward and before every run, as
    our runtime does after its own reads; with it off the reads are served from whatever the OS
    cached, and the result says so.
    """

    name = "accelerate"

    def __init__(self, spec, checkpoint: str | None, batch: int, max_memory: dict, dtype: torch.dtype, device: str,
                 offload_dir: str, pad_id: int, cold_reads: bool = True):
        from accelerate import dispatch_model, infer_auto_device_map
        from transformers import AutoModelForCausalLM

        super().__init__(pad_id, device)
        self.batch, self.max_memory, self.cold_reads = batch, max_memory, cold_reads
        self.offload_dir = tempfile.mkdtemp(prefix="accelerate-", dir=offload_dir)
        if checkpoint is not None:
            # accelerate's own placement rule (infer_auto_device_map on the empty model) for this max_memory
            from accelerate import init_empty_weights
            from transformers import AutoConfig

            with init_empty_weights():
                empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint), dtype=dtype)
            empty.tie_weights()
            device_map = infer_auto_device_map(empty, max_memory=max_memory, dtype=dtype,
                                               no_split_module_classes=empty._no_split_modules)
            del empty
            self.model = AutoModelForCausalLM.from_pretrained(
                checkpoint, dtype=dtype, device_map=device_map, offload_folder=self.offload_dir)
            self.files = glob.glob(os.path.join(checkpoint, "*.safetensors"))
        else:  # a dummy model built in memory (no checkpoint on disk)
            model = hf_models.dummy_model_in_memory(spec, dtype)
            device_map = infer_auto_device_map(model, max_memory=max_memory, dtype=dtype,
                                               no_split_module_classes=model._no_split_modules)
            self.model = dispatch_model(model, device_map, offload_dir=self.offload_dir)
            self.model.hf_device_map = device_map
            self.files = []
        self.model.eval()
        self.device_map = dict(getattr(self.model, "hf_device_map", {}) or {})
        self.files += glob.glob(os.path.join(self.offload_dir, "**", "*"), recursive=True)
        self.files = [f for f in self.files if os.path.isfile(f)]
        self.placement = self._placement()
        if cold_reads:
            for name, where in self.device_map.items():
                if where == "disk":
                    for module in _called_modules(self.model.get_submodule(name) if name else self.model):
                        module.register_forward_hook(lambda *_: drop_page_cache(self.files))

    def _placement(self) -> dict:
        """Weight bytes per tier from the device map (a tied parameter counts once, where it first appears)."""
        out, seen = {t: 0 for t in TIERS}, set()
        for name, where in self.device_map.items():
            module = self.model.get_submodule(name) if name else self.model
            params = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            tier = "disk" if where == "disk" else "cpu" if where == "cpu" else "gpu"
            out[tier] += sum(p.numel() * p.element_size() for p in params)
        if self.device.type == "cpu":  # the compute device is the CPU: its memory is one tier
            out["cpu"] += out.pop("gpu")
            out["gpu"] = 0
        return out

    def _before_run(self):
        if self.cold_reads:
            drop_page_cache(self.files)

    def peak_memory(self):
        out = dict(self.placement)
        if self.device.type == "cuda":
            out["gpu"] = int(torch.cuda.max_memory_allocated(self.device))
        else:
            out["cpu"] = self.placement["cpu"] + self.rss.peak_delta
            out["rss_rise"] = self.rss.peak_delta
        out["disk_bytes_read"] = self.rss.disk_read  # from /proc/self/io: what really came off the disk
        return out

    def describe(self):
        total = sum(self.placement.values()) or 1
        return {"max_memory": {str(k): int(v) for k, v in self.max_memory.items()},
                "device_map": {k: str(v) for k, v in self.device_map.items()},
                "weights_percent": {t: round(100 * v / total, 1) for t, v in self.placement.items()},
                "disk_reads": "cold (page cache dropped after each disk layer)" if self.cold_reads
                else "page cache allowed"}

    def close(self):
        self.model = None
        import shutil

        shutil.rmtree(self.offload_dir, ignore_errors=True)


def _called_modules(module):
    """The modules a forward pass calls at or under `module`: a container (e.g. a device map's
    `model.decoder.layers`) is never called itself, so a hook on it would never fire."""
    if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        for child in module.children():
            yield from _called_modules(child)
    else:
        yield module


# -- the original FlexGen ------------------------------------------------------------------------

# Its own policies for a 16 GB GPU, prompt 512 / gen 32, from FlexGen's benchmark suite
# (benchmark/flexgen/bench_suite.py, suites 6b7_1x1 and 30b_1x1). OPT-30B's suite block is 48x3 on a
# 208 GB host: its cache (108 GB at 512 + 32 tokens) and pinned weights (48 GB) would not fit the GPU
# script's 100 GiB CPU budget on a 128 GiB box, so the same placement runs with a 32x2 block (96 GB).
FLEXGEN018_SUITE = {
    "opt-6.7b": "--percent 100 0 100 0 100 0 --gpu-batch-size 2 --overlap False",
    "opt-30b": "--percent 20 80 0 100 0 100 --gpu-batch-size 32 --num-gpu-batches 2 --cpu-cache-compute",
}


def flexgen018_available() -> str | None:
    """None when flexgen 0.1.8 can run here, else why not."""
    if not torch.cuda.is_available():
        return "needs CUDA"
    try:
        import flexgen  # noqa: F401
    except ImportError:
        return "package flexgen is not installed"
    return None


class FlexGen018(System):
    """`python -m flexgen.flex_opt` through a driver that caps GPU memory and stubs the tokenizer
    (it would fetch facebook/opt-30b's from the hub). Timings are FlexGen's own (its log)."""

    name = "flexgen-0.1.8"

    def __init__(self, spec, args: str | None, offload_dir: str, gpu_fraction: float | None, prompt_len: int,
                 gen_len: int, cut_gen_len: int | None):
        if spec.family != "opt" or (args is None and spec.name not in FLEXGEN018_SUITE):
            raise ValueError(f"flexgen-0.1.8 runs OPT sizes of its suite ({', '.join(FLEXGEN018_SUITE)}), "
                             f"not {spec.name!r}; pass --flexgen018-args")
        self.args = (args or FLEXGEN018_SUITE[spec.name]).split()
        self.model = "facebook/" + spec.name
        self.offload_dir, self.gpu_fraction = offload_dir, gpu_fraction
        self.prompt_len, self.gen_len, self.cut = prompt_len, gen_len, cut_gen_len
        gbs = int(_flag(self.args, "--gpu-batch-size", 4))
        nb = int(_flag(self.args, "--num-gpu-batches", 1))
        self.batch = gbs * nb
        self.last = {}

    def command(self, log_file: str) -> list[str]:
        cmd = [sys.executable, "-m", "flexgen_eval.bench.flexgen018_driver"]
        if self.gpu_fraction:
            cmd += ["--memory-fraction", f"{self.gpu_fraction:.6f}"]
        cmd += ["--", "--model", self.model, "--path", "_DUMMY_", "--offload-dir", self.offload_dir,
                "--prompt-len", str(self.prompt_len), "--gen-len", str(self.gen_len), "--log-file", log_file,
                *self.args]
        if self.cut:
            cmd += ["--cut-gen-len", str(self.cut)]
        return cmd

    def run(self) -> dict:
        log = tempfile.mktemp(suffix=".log", dir=self.offload_dir)
        proc = subprocess.run(self.command(log), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"flexgen 0.1.8 failed: {(proc.stderr or proc.stdout)[-800:]}")
        with open(log) as f:
            self.last = parse_flexgen_log(f.read())
        return self.last

    def peak_memory(self):
        return {"gpu": int(self.last.get("gpu_peak_mem", 0)), "cpu": 0, "disk": 0}

    def describe(self):
        return {"args": " ".join(self.args)}


def _flag(args: list[str], name: str, default):
    return args[args.index(name) + 1] if name in args else default


def parse_flexgen_log(text: str) -> dict:
    """FlexGen's benchmark log (utils.write_benchmark_log): `peak gpu mem: X GB`, `projected: ...`,
    `prefill latency: X s`, `decode latency: X s`, `total latency: ...`, `total throughput: ...`."""
    out = {}
    for key in ("prefill latency", "decode latency", "total latency", "total throughput", "peak gpu mem"):
        m = re.search(re.escape(key) + r":\s*([0-9.eE+-]+)", text)
        if m:
            out[key.replace(" ", "_")] = float(m.group(1))
    if "peak_gpu_mem" in out:
        out["gpu_peak_mem"] = out.pop("peak_gpu_mem") * (1 << 30)  # FlexGen's GB is 2**30
    out["projected"] = "projected: True" in text
    missing = {"prefill_latency", "decode_latency"} - set(out)
    if missing:
        raise RuntimeError(f"flexgen log lacks {sorted(missing)}: {text[:300]!r}")
    return out
