"""LLM: the public entry point of the runtime."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from ..memory.compression import QuantConfig
from ..memory.tiers import TIERS, TierSet
from ..memory.weight_store import WeightSource, WeightStore, place_experts
from ..model.families import family_of
from ..model.layers import by_expert, storage_plan
from ..model.spec import BUILTIN_CONFIGS, ModelSpec
from ..planning.machine import default_hardware, resolve_budgets
from ..planning.planner import InfeasibleBudget, plan_policy
from ..planning.policy import Policy
from .completion import Completion, OnBlock
from .jobs import GenerationJob, ScoringJob
from .outputs import CompletionOutput, RequestOutput, ScoreOutput
from .prefix_sharing import common_prefix, pack_choices, prefix_blocks, prefix_groups
from .sampling import RowSampler, SamplingParams
from .scheduler import Scheduler

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


SHARED_PREFIX_MIN = 16  # a shorter prefix common to a block's prompts is recomputed per row
PACKED_ROW_TOKENS = 2048  # longest row prompt_logprobs packs alike prompts into
COMPRESSION_FIELDS = ("compression_bits", "compression_group_size", "weight_ranges", "cache_keys")
PROMPT_BUCKET = 64  # prompt lengths planned together (a bucket is planned for its longest)

log = logging.getLogger(__name__)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_checkpoint(name_or_dir: str) -> str:
    """A local directory, an embedded default model, or a hub id (downloaded when the hub is reachable)."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    try:
        from ..model import store as model_store

        if model_store.is_embedded(name_or_dir):
            return model_store.resolve_model(name_or_dir)
    except ImportError:
        pass
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_dir, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:
        raise FileNotFoundError(
            f"model {name_or_dir!r} is not a directory, not an embedded model, and could not be fetched "
            f"from the hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


class LLM:
    def __init__(self, spec: ModelSpec, layers, weights: WeightStore, tiers: TierSet, policy: Policy,
                 dtype: torch.dtype, tokenizer=None, path: str | None = None):
        self.spec, self.layers, self.weights, self.tiers = spec, layers, weights, tiers
        self.policy, self.dtype, self.tokenizer, self.path = policy, dtype, tokenizer, path
        self.device = tiers.device
        self.scheduler = Scheduler(layers, weights, tiers, policy, spec, dtype)
        self.last_run: dict = {}
        self.totals: dict = {}  # per kind ("generate", "score"): calls, rows, tokens (generated or scored), seconds
        self.plan = None  # the planner's Plan when the policy was chosen automatically
        self.budgets = None  # the machine.Budgets it was planned within
        self.share_prefixes = True  # compute prompt prefixes that rows share once (generate, scoring)
        self.replan: dict | None = None  # planner arguments, to plan each bucket of lengths again
        self.bucket_plans: dict = {}  # (prompt bucket, new tokens) -> Plan
        self._unplannable: set = set()  # buckets that do not fit (their prompts are planned exactly)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir: str, policy: Policy | None = None, device=None, dtype=None,
                        offload_dir: str | None = None, dummy_weights: bool = False, memory: dict | None = None,
                        progress: bool = False, hardware=None, workload: tuple[int, int] = (512, 32),
                        compress_weight: bool = False, compress_cache: bool = False,
                        max_block_size: int | None = None, compression: dict | None = None) -> "LLM":
        """Load a model. Without a `policy` the planner places the weights for `workload` = (prompt
        tokens, generated tokens) within `memory` ({"gpu": "16GiB", "cpu": ..., "disk": ...}; a tier
        not named gets what the machine has, see machine.py) on `hardware` (a preset name, a profile
        file, or None: this machine's), and plans each bucket of request lengths again as requests
        arrive, with the weights where they were loaded. `max_block_size` caps every planned block;
        `compression` sets the planned policy's compression fields (`COMPRESSION_FIELDS`)."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA device is available")
        dtype = resolve_dtype(dtype, device)
        path = None
        key = str(name_or_dir).split("/")[-1].lower()
        if dummy_weights and not os.path.isdir(name_or_dir) and key in BUILTIN_CONFIGS:
            spec = ModelSpec.from_name(key)
        else:
            path = resolve_checkpoint(str(name_or_dir))
            spec = ModelSpec.from_dir(path)
        plan = replan = budgets = None
        if policy is None:
            budgets, replan, plan = _plan_at_load(spec, device, dtype, offload_dir, memory, hardware, workload,
                                                  compress_weight, compress_cache, max_block_size,
                                                  compression_fields(compression))
            policy = plan.policy
        if memory is not None and plan is None:
            check_fits(spec, policy, memory, dtype)
        tiers = TierSet(device, offload_dir)
        layers = family_of(spec).build_layers(spec)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(layers), desc="loading weights", unit="layer")
        try:
            quant = (QuantConfig(policy.compression_bits, policy.compression_group_size, policy.weight_ranges)
                     if policy.compress_weight else None)
            weights = WeightStore(layers, tiers, policy.weights, dtype,
                                  WeightSource(path, dummy=dummy_weights, identity=path or spec.name), quant, bar)
        except BaseException:
            tiers.close()
            raise
        finally:
            if bar is not None:
                bar.close()
        tokenizer = _load_tokenizer(path) if path else None
        llm = cls(spec, layers, weights, tiers, policy, dtype, tokenizer, path)
        llm.plan, llm.replan, llm.budgets = plan, replan, budgets
        return llm

    def policy_for(self, prompt_len: int, new_tokens: int) -> Policy:
        """The policy a block of prompts up to `prompt_len` tokens runs under. An explicit policy is
        used as given; a planned one is planned again for the bucket of lengths (prompts rounded up
        to a multiple of PROMPT_BUCKET), keeping the weights where they were loaded."""
        if self.replan is None:
            return self.policy
        # a scored row may fill the whole context, with no token generated after it
        prompt_len = min(prompt_len, self.spec.max_seq_len - new_tokens)
        bucket = max(prompt_len, min(-(-prompt_len // PROMPT_BUCKET) * PROMPT_BUCKET,
                                     self.spec.max_seq_len - new_tokens))
        for length in dict.fromkeys((bucket, prompt_len)):  # the exact length when the bucket's does not fit
            key = (length, new_tokens)
            if key in self._unplannable:
                continue
            if key not in self.bucket_plans:
                try:
                    self.bucket_plans[key] = plan_policy(self.spec, length, new_tokens, weights=self.policy.weights,
                                                         **self.replan)
                except InfeasibleBudget:
                    if length == prompt_len:
                        raise
                    self._unplannable.add(key)
                    continue
            return self.bucket_plans[key].policy

    def describe_placement(self) -> str:
        """The policy at load, and whether it was planned (then every bucket of lengths is planned again)."""
        if self.replan is None:
            return f"policy: {self.policy.describe()}"
        return f"planned: {self.policy.describe()}; each bucket of request lengths is planned again"

    def close(self):
        """Stop the I/O threads, free the weights (device memory too, even while a caller still
        holds this object) and remove the temporary files."""
        self.scheduler.close()
        self.weights.free()
        self.tiers.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ---------------------------------------------------------------------
    # Each takes `on_block`: called after every block with [(request index, result), ...] for the
    # requests the block finished, so a caller can store results as they come (a resumable run).

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None,
                 on_block: OnBlock | None = None, seed_ids: list[int] | None = None) -> list[RequestOutput]:
        """seed_ids: the number each prompt's sampling is seeded by (default its position), so a
        call split among workers samples what the whole call would."""
        params = params or SamplingParams()
        if seed_ids is not None and len(seed_ids) != len(prompts):
            raise ValueError(f"seed_ids has {len(seed_ids)} numbers for {len(prompts)} prompts")
        self._check_prompts(prompts, extra=params.max_new_tokens)
        if params.top_logprobs > self.spec.vocab_size:
            raise ValueError(f"SamplingParams.top_logprobs is {params.top_logprobs}, more than the vocabulary's "
                             f"{self.spec.vocab_size} tokens")
        self._check_ids(params.stop_token_ids, "SamplingParams.stop_token_ids")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer, and this model was loaded without one")
        # Greedy completions are identical: compute one, copy it n times.
        copies = 1 if params.greedy else params.n
        rows, samplers, owners = [], [], []
        for i, prompt in enumerate(prompts):
            for c in range(copies):
                rows.append(list(prompt))
                samplers.append(RowSampler(params, i if seed_ids is None else seed_ids[i], c))
                owners.append(i)
        results = [None] * len(rows)
        rows_of = [[] for _ in prompts]
        for r, i in enumerate(owners):
            rows_of[i].append(r)

        def assemble(i):
            completions = [results[r] for r in rows_of[i]]
            if copies == 1 and params.n > 1:
                first = completions[0]
                completions = [CompletionOutput(c, list(first.token_ids), list(first.logprobs),
                                                list(first.top_logprobs), first.text, first.finish_reason)
                               for c in range(params.n)]
            return [(i, RequestOutput(list(prompts[i]), completions))]

        done = Completion(owners, assemble, on_block)
        eos = self.spec.eos_token_ids
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos = tuple(set(eos) | {self.tokenizer.eos_token_id})
        start, generated, step_seconds = time.perf_counter(), 0, []
        for block, policy in self._blocks(rows, params.max_new_tokens):
            block_rows = [rows[i] for i in block]
            shared = self._shared_prefix(block_rows, policy)
            job = GenerationJob([r[shared:] for r in block_rows], [samplers[i] for i in block], params,
                                policy.gpu_batch_size, self.device, self._pad_id(), eos, self.tokenizer,
                                prefix=block_rows[0][:shared])
            with torch.inference_mode():
                self.scheduler.run(job, policy)
            step_seconds.append(self.scheduler.step_seconds)
            for r, i in enumerate(block):
                results[i] = self._completion(job, r, samplers[i].completion_index)
                generated += len(results[i].token_ids)
            done.rows_done(block)
        self._record("generate", start, generated, len(rows))
        self.last_run["step_seconds"] = step_seconds  # per block: each token step (host time)
        return done.in_order(len(prompts))

    def score(self, pairs: list[tuple[list[int], list[int]]], on_block: OnBlock | None = None) -> list[ScoreOutput]:
        """Log-probs of each continuation given its context, and whether greedy decoding would produce it."""
        rows, targets = [], []
        for n, (context, continuation) in enumerate(pairs):
            if not context or not continuation:
                raise ValueError("score() needs a non-empty context and a non-empty continuation for every pair")
            seq = list(context) + list(continuation)
            self._check_ids(seq, f"pair {n}")
            rows.append(seq[:-1])
            targets.append([(len(context) - 1 + i, tok) for i, tok in enumerate(continuation)])
        scored = [None] * len(rows)
        done = Completion(list(range(len(rows))), lambda i: [(i, ScoreOutput(scored[i][0], all(scored[i][1])))], on_block)
        self._run_scoring(rows, targets, scored, done)
        return done.in_order(len(rows))

    def score_choices(self, groups: list[tuple[list[int], list[list[int]]]],
                      on_block: OnBlock | None = None) -> list[list[ScoreOutput]]:
        """Like score() for several continuations of one context, computing the context once."""
        rows, targets, positions, segments, owners, packs_of = [], [], [], [], [], []
        for g, (context, continuations) in enumerate(groups):
            if not context or not continuations or any(not c for c in continuations):
                raise ValueError("score_choices() needs a non-empty context and non-empty continuations in every group")
            self._check_ids(list(context) + [t for c in continuations for t in c], f"group {g}")
            packs_of.append([])
            for pack in pack_choices(list(context), [list(c) for c in continuations], self.spec.max_seq_len):
                packs_of[g].append((len(rows), pack.owners))
                rows.append(pack.tokens)
                targets.append(pack.targets)
                positions.append(pack.positions)
                segments.append(pack.segments)
                owners.append(g)
        scored = [None] * len(rows)

        def assemble(g):
            per_choice = [([], []) for _ in groups[g][1]]
            for r, choice_of_target in packs_of[g]:
                for c, lp, is_greedy in zip(choice_of_target, *scored[r]):
                    per_choice[c][0].append(lp)
                    per_choice[c][1].append(is_greedy)
            return [(g, [ScoreOutput(lp, all(gr)) for lp, gr in per_choice])]

        done = Completion(owners, assemble, on_block)
        self._run_scoring(rows, targets, scored, done, positions, segments)
        return done.in_order(len(groups))

    def prompt_logprobs(self, prompts: list[list[int]], on_block: OnBlock | None = None) -> list[list[float | None]]:
        """Per-token log-probs of each prompt; the first token has none. Prompts that start alike
        (one question with each of its answers, as HELM's separate multiple-choice methods send
        them) are packed into one row per group, so the shared start is computed once."""
        self._check_prompts(prompts)
        rows, targets, positions, segments, owners, groups = [], [], [], [], [], []
        for g, (members, shared) in enumerate(prefix_groups(prompts, SHARED_PREFIX_MIN if self.share_prefixes
                                                            else None)):
            groups.append((members, []))  # its rows: (row index, context targets it holds, owner of each target)
            if shared == 0:  # on its own: one causal row
                p = prompts[members[0]]
                groups[g][1].append((len(rows), 0, None))
                rows.append(list(p[:-1]) if len(p) > 1 else list(p))
                targets.append([(i, p[i + 1]) for i in range(len(p) - 1)])
                positions.append(list(range(len(rows[-1]))))
                segments.append([0] * len(rows[-1]))
                owners.append(g)
                continue
            context = list(prompts[members[0]][:shared])
            own = [(j, context[j + 1]) for j in range(shared - 1)]  # the shared part's own tokens
            suffixes = [list(prompts[i][shared:]) for i in members]
            # rows of at most PACKED_ROW_TOKENS (unless one prompt is longer): a packed row's
            # attention is quadratic in its length, however few of its positions see each other
            row_len = min(self.spec.max_seq_len, max(PACKED_ROW_TOKENS, shared + max(map(len, suffixes))))
            for n, pack in enumerate(pack_choices(context, suffixes, row_len)):
                groups[g][1].append((len(rows), len(own) if n == 0 else 0, pack.owners))
                rows.append(pack.tokens)
                targets.append((own if n == 0 else []) + pack.targets)
                positions.append(pack.positions)
                segments.append(pack.segments)
                owners.append(g)
        scored = [None] * len(rows)

        def assemble(g):
            members, group_rows = groups[g]
            if group_rows[0][2] is None:
                return [(members[0], [None] + scored[group_rows[0][0]][0])]
            out, context_lps = {}, scored[group_rows[0][0]][0][:group_rows[0][1]]
            for r, n_own, choice_of_target in group_rows:
                for choice, lp in zip(choice_of_target, scored[r][0][n_own:]):
                    out.setdefault(members[choice], [None] + context_lps).append(lp)
            return sorted(out.items())

        done = Completion(owners, assemble, on_block)
        self._run_scoring(rows, targets, scored, done, positions, segments)
        return done.in_order(len(prompts))

    # -- internals ----------------------------------------------------------------------
    def _shared_prefix(self, rows: list[list[int]], policy: Policy, limit: int | None = None) -> int:
        """Tokens at the start of every row (few-shot examples, a system prompt) that a block
        computes once instead of once per row; each row keeps at least one token of its own, and
        at most `limit` are shared. 0 when too short to pay for a separate pass, or with a
        compressed cache, sparse attention or sliding layers, whose prefill does not take a shared prefix
        (a sliding layer's ring keeps cache columns, and the prefix puts padding between its own columns
        and a row's, so columns would no longer count tokens)."""
        if (not self.share_prefixes or len(rows) < 2 or policy.compress_cache or policy.attn_sparsity < 1.0
                or self.spec.sliding_window is not None):
            return 0
        limit = min([len(r) - 1 for r in rows] + ([limit] if limit is not None else []))
        for r in rows[1:]:
            limit = common_prefix(rows[0], r, limit)
        return limit if limit >= SHARED_PREFIX_MIN else 0

    def _run_scoring(self, rows, targets, scored: list, done: Completion, positions=None, segments=None):
        """scored[i] = (log-probs, greedy flags) at row i's targets, block by block; a block's common
        prefix is computed once when no target falls in it. The callers checked every token id (the
        targets' too, which rows leave out); the rows' lengths are checked here."""
        self._check_prompts(rows, ids=False)
        start = time.perf_counter()
        for block, policy in self._blocks(rows, 1):
            block_rows = [rows[i] for i in block]
            first_target = min((pos for i in block for pos, _ in targets[i]), default=0)
            n = self._shared_prefix(block_rows, policy, limit=first_target)
            cut = lambda items: None if items is None else [items[i][n:] for i in block]  # noqa: E731
            job = ScoringJob([r[n:] for r in block_rows], [[(pos - n, tok) for pos, tok in targets[i]] for i in block],
                             policy.gpu_batch_size, self.device, self._pad_id(), cut(positions), cut(segments),
                             prefix=block_rows[0][:n])
            with torch.inference_mode():
                self.scheduler.run(job, policy)
            for r, i in enumerate(block):
                scored[i] = (job.logprobs[r], job.greedy[r])
            done.rows_done(block)
        self._record("score", start, sum(len(r) for r in rows), len(rows))

    def _blocks(self, rows, new_tokens: int):
        """(row indices, policy) per block, as many rows as the policy for the block's longest row
        takes; rows that start alike fill blocks of their own (prefix_sharing.prefix_blocks)."""
        def policy(i):
            return self.policy_for(len(rows[i]), new_tokens)

        min_shared = SHARED_PREFIX_MIN if self.share_prefixes else None
        return [(block, policy(block[0])) for block in prefix_blocks(rows, min_shared, lambda i: policy(i).block_size)]

    def _check_prompts(self, prompts, extra: int = 0, ids: bool = True):
        if not isinstance(prompts, (list, tuple)):
            raise ValueError("prompts must be a list of token-id lists")
        limit = self.spec.max_seq_len
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty")
            if len(p) + extra > limit:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; with {extra} new tokens that exceeds the model context of {limit}"
                )
            if ids:
                self._check_ids(p, f"prompt {i}")

    def _check_ids(self, ids, what: str):
        """Token ids are integers within the vocabulary: a float would be truncated silently, and an id
        past the vocabulary indexes past the embedding (on CUDA, an assert that poisons the process)."""
        wrong = [t for t in ids if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
        if wrong:
            raise ValueError(f"{what} has token ids that are not integers: {wrong[:5]}")
        bad = [int(t) for t in ids if not 0 <= t < self.spec.vocab_size]
        if bad:
            raise ValueError(f"{what} has token ids outside the vocabulary (size {self.spec.vocab_size}): {bad[:5]}")

    def _pad_id(self) -> int:
        return self.spec.pad_token_id if self.spec.pad_token_id is not None else 0

    def _completion(self, job, r, index) -> CompletionOutput:
        tokens = job.tokens[r]
        text = job.texts[r]
        if text is None and self.tokenizer is not None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return CompletionOutput(index, list(tokens), list(job.logprobs[r]), list(job.top[r]), text,
                                job.finish[r] or "length")

    def _record(self, kind, start, tokens, rows):
        seconds = time.perf_counter() - start
        self.last_run = {"kind": kind, "seconds": seconds, "tokens": tokens, "rows": rows,
                         "tokens_per_s": tokens / seconds if seconds > 0 else 0.0}
        totals = self.totals.setdefault(kind, {"calls": 0, "rows": 0, "tokens": 0, "seconds": 0.0})
        totals["calls"] += 1
        totals["rows"] += rows
        totals["tokens"] += tokens
        totals["seconds"] += seconds

    def memory_stats(self) -> dict:
        """Bytes resident, peak, read and written per tier since the model was loaded (for a mixture of
        experts also the experts' bytes and count per tier, and how many were read); on CUDA also
        the allocator's peak, which includes working buffers the tier accounting does not see, and the
        most host memory the CPU tier held page-locked at once."""
        stats = self.tiers.stats.as_dict()
        if any(self.weights.experts):  # a mixture's experts: bytes and how many on each tier
            stats["experts"] = self.weights.expert_stats()
        if self.device.type == "cuda":
            stats["device_peak_allocated"] = torch.cuda.max_memory_allocated(self.device)
            stats["host_peak_locked"] = self.tiers.pinned.high_water
        return stats


def compression_fields(compression: dict | None) -> dict | None:
    """The Policy fields a planned load may set (checked here, so a typo is named before planning)."""
    if not compression:
        return None
    unknown = set(compression) - set(COMPRESSION_FIELDS)
    if unknown:
        raise ValueError(f"unknown compression settings {sorted(unknown)}; use {', '.join(COMPRESSION_FIELDS)}")
    Policy(**compression)  # each value checked where Policy checks it
    return dict(compression)


def _plan_at_load(spec, device, dtype, offload_dir, memory, hardware, workload, compress_weight, compress_cache,
                  max_block_size, compression=None):
    """(budgets, planner arguments for later buckets, the plan that places the weights)."""
    budgets = resolve_budgets(memory, device, offload_dir)
    replan = dict(memory=budgets.bytes, hardware=hardware or default_hardware(device, offload_dir),
                  dtype_bytes=torch.empty((), dtype=dtype).element_size(), compress_weight=compress_weight,
                  compress_cache=compress_cache, max_block_size=max_block_size, compression=compression)
    gen_len = max(1, min(workload[1], spec.max_seq_len // 2))
    prompt_len = max(1, min(workload[0], spec.max_seq_len - gen_len))
    try:
        plan = plan_policy(spec, prompt_len, gen_len, **replan)
    except InfeasibleBudget as e:
        raise InfeasibleBudget(f"{e} [{budgets.describe()}]", e.shortfall) from None
    log.info("%s", budgets.describe())
    log.info("planned for prompt %d + gen %d: %s", prompt_len, gen_len, plan.policy.describe())
    return budgets, replan, plan


def check_fits(spec: ModelSpec, policy: Policy, memory: dict, dtype: torch.dtype):
    """Resident weights per tier against the budgets; cache and activations are checked by the planner."""
    from ..units import parse_size

    layers = family_of(spec).build_layers(spec)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = dict.fromkeys(TIERS, 0)
    for streamed, tables in storage_plan(layers):  # as the weight store places them, experts whole
        own, grouped = by_expert(streamed + tables)
        experts = [sum(s.numel for s in specs) for specs in grouped.values()]
        own_split, expert_tiers = place_experts(sum(s.numel for s in own), experts, policy.weights)
        for tier, n in zip(TIERS, own_split):
            need[tier] += n * itemsize
        for n, tier in zip(experts, expert_tiers):
            need[TIERS[tier]] += n * itemsize
    for tier in TIERS:
        if tier in memory and memory[tier] is not None and need[tier] > parse_size(memory[tier]):
            from ..units import format_size

            raise ValueError(
                f"policy does not fit: weights need {format_size(need[tier])} on {tier}, budget is "
                f"{format_size(parse_size(memory[tier]))} (short by {format_size(need[tier] - parse_size(memory[tier]))})"
            )


def _load_tokenizer(path: str):
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, n)) for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
