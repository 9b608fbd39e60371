"""`lm_eval --model flexgen`: lm-evaluation-harness requests -> token ids -> flexgen_core calls.

A translator, no inference logic: tokenization follows lm-eval's HFLM exactly (so scores match
`--model hf` on the same checkpoint), and every request type is handed to the runtime as large,
length-sorted lists, because the runtime amortises each streamed weight over a whole block.
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from flexgen_core import LLM, Policy, SamplingParams
from flexgen_core.planning.policy import parse_cpu_attention
from flexgen_eval import lm_eval_ranks, parallel, run_stats

# under lm-eval's logger, so its --verbosity shows the budgets and the plan
log = logging.getLogger("lm_eval.models.flexgen")

def parse_percent(value) -> list[float]:
    """FlexGen's --percent from model_args: a list (the CLI parses `[20,80,...]`), JSON, or '20 80 ...'."""
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        parts = text.replace(",", " ").replace("/", " ").split()
    else:
        parts = list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 6:
        raise ValueError(f"percent needs six numbers [w_gpu,w_cpu,c_gpu,c_cpu,a_gpu,a_cpu], got {value!r}")
    return numbers


def build_policy(percent=None, **knobs) -> Policy | None:
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if percent is None and not knobs:
        return None
    for name in ("gpu_batch_size", "num_gpu_batches"):
        if name in knobs:
            knobs[name] = int(knobs[name])
    for name in ("overlap", "compress_weight", "compress_cache"):
        if name in knobs:
            knobs[name] = _as_bool(name, knobs[name])
    if "cpu_attention" in knobs:
        try:
            knobs["cpu_attention"] = parse_cpu_attention(knobs["cpu_attention"])
        except ValueError as e:
            raise ValueError(f"model_arg {e}") from None
    if percent is None:
        return Policy(**knobs)
    return Policy.from_percent(parse_percent(percent), **knobs)


def _as_bool(name, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"model_arg {name} must be true or false, got {value!r}")


def _positive_int(name, value) -> int:
    if not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"model_arg {name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def resolve_device(device):
    """The CLI always passes --device (default cuda:0); without CUDA that means the CPU."""
    if device in (None, "", "auto"):
        return None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        log.info("device %s requested but CUDA is not available; computing on the CPU", device)
        return "cpu"
    return str(device)


class FlexGenLM(TemplateLM):
    """An lm-eval LM over flexgen_core.LLM; model_args are documented in scenarios/lm_eval/README.md."""

    def __init__(self, pretrained: str | None = None, dtype=None, device=None, batch_size=None,
                 max_batch_size=None, gpu_mem=None, cpu_mem=None, disk_mem=None, offload_dir=None,
                 percent=None, gpu_batch_size=None, num_gpu_batches=None, cpu_attention=None, overlap=None,
                 compress_weight=None, compress_cache=None, compression_bits=None, compression_group_size=None,
                 weight_ranges=None, cache_keys=None, dummy_weights=False, tokenizer=None,
                 add_bos_token=None, prefix_token_id=None, max_length=None, max_gen_toks=256,
                 chunk_blocks=None, hardware=None, data_parallel_size=None, ray_address=None,
                 llm: LLM | None = None, **unknown):
        super().__init__()
        if unknown:
            raise TypeError(f"flexgen: unknown model_args {sorted(unknown)}; see flexgen_eval/lm_eval_backend.py")
        if llm is None and not pretrained:
            raise ValueError("flexgen: model_args need pretrained=<hub id or checkpoint dir>")
        if chunk_blocks is not None:
            log.warning("flexgen: chunk_blocks has no effect any more: results arrive as each block finishes")
        # The CLI's --batch_size defaults to "1" and may be "auto": both leave the block to the planner.
        # A larger number caps every planned block, or is the GPU batch of an explicit policy.
        cap = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 1 else None
        if cap is None and str(max_batch_size).isdigit():
            cap = int(max_batch_size)
        explicit = percent is not None or any(v is not None for v in (gpu_batch_size, num_gpu_batches, cpu_attention,
                                                                       overlap))
        if explicit and gpu_batch_size is None and cap is not None:
            gpu_batch_size = cap
        compression = {k: v for k, v in (("compression_bits", compression_bits),
                                          ("compression_group_size", compression_group_size),
                                          ("weight_ranges", weight_ranges), ("cache_keys", cache_keys)) if v is not None}
        for name in ("compression_bits", "compression_group_size"):
            if name in compression:
                compression[name] = _positive_int(name, compression[name])
        policy = build_policy(percent, gpu_batch_size=gpu_batch_size, num_gpu_batches=num_gpu_batches,
                              cpu_attention=cpu_attention, overlap=overlap, compress_weight=compress_weight,
                              compress_cache=compress_cache, **compression) if explicit else None
        memory = {k: v for k, v in (("gpu", gpu_mem), ("cpu", cpu_mem), ("disk", disk_mem)) if v is not None}
        ranks = lm_eval_ranks.launched_world_size() > 1 and llm is None
        device = resolve_device(device)
        if ranks:  # accelerate launch / torchrun: this process evaluates its rank's shard on its own GPU
            device = lm_eval_ranks.rank_device(device)
        if llm is None:
            load = dict(policy=policy, device=device, dtype=dtype, offload_dir=offload_dir,
                        dummy_weights=_as_bool("dummy_weights", dummy_weights), memory=memory or None,
                        max_block_size=cap, hardware=hardware,
                        compress_weight=_as_bool("compress_weight", compress_weight or False),
                        compress_cache=_as_bool("compress_cache", compress_cache or False),
                        compression=None if explicit else compression or None)
            workers = _positive_int("data_parallel_size", data_parallel_size or 1)
            if ranks and (workers > 1 or ray_address):
                raise ValueError("flexgen: data_parallel_size / ray_address shard requests over Ray workers; under "
                                 "accelerate launch or torchrun every rank is a worker already: use one or the other")
            llm = parallel.load(str(pretrained), workers, ray_address, **load)  # each worker plans within these budgets
            run_stats.track(llm, "lm_eval")
        self.llm = llm
        self._device = llm.device
        if ranks:
            self._rank, self._world_size = lm_eval_ranks.join(llm.device)
        self.tokenizer = self._load_tokenizer(tokenizer, add_bos_token)
        if llm.tokenizer is None:
            llm.tokenizer = self.tokenizer  # the runtime needs one for stop strings
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        limit = llm.spec.max_seq_len
        self._max_length = min(int(max_length), limit) if max_length else limit
        self._max_gen_toks = int(max_gen_toks)
        if llm.budgets is not None:
            log.info("flexgen %s", llm.budgets.describe())
        log.info("flexgen %s", llm.describe_placement())

    # -- ranks under accelerate launch / torchrun (lm-eval's evaluator joins the shards) ------------
    def all_gather(self, tensor):
        return tensor if self.world_size <= 1 else lm_eval_ranks.all_gather(tensor)

    def gather_object(self, obj, dst=0):
        return [obj] if self.world_size <= 1 else lm_eval_ranks.gather_object(obj, dst)

    def barrier(self) -> None:
        if self.world_size > 1:
            lm_eval_ranks.barrier()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """Parse like the CLI does (commas inside brackets stay: percent=[20,80,0,100,0,100]);
        lm-eval's own string parser splits every comma."""
        try:
            from lm_eval._cli.utils import key_val_to_dict
        except ImportError:
            return super().create_from_arg_string(arg_string, additional_config)
        return cls.create_from_arg_obj(key_val_to_dict(arg_string or ""), additional_config)

    def _load_tokenizer(self, name, add_bos_token):
        if name is None and add_bos_token is None:
            if self.llm.tokenizer is None:
                raise ValueError("flexgen: the checkpoint has no tokenizer; pass model_args tokenizer=<name or dir>")
            return self.llm.tokenizer
        from transformers import AutoTokenizer

        kwargs = {} if add_bos_token is None else {"add_bos_token": _as_bool("add_bos_token", add_bos_token)}
        return AutoTokenizer.from_pretrained(name or self.llm.path, **kwargs)

    # -- the properties lm-eval reads ------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def get_model_info(self) -> dict:
        return {"model_path": self.llm.path, "policy": self.llm.policy.describe(), "dtype": str(self.llm.dtype)}

    # -- tokenization, as HFLM does it ---------------------------------------------------------
    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> list[int]:
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": _as_bool("add_bos_token", self.add_bos_token)}
        else:
            special = {}
        # a prompt that already starts with the BOS text must not get a second BOS
        if add_special_tokens is None and string.startswith(self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        import jinja2

        def render(history):
            return self.tokenizer.apply_chat_template(history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=not add_generation_prompt)

        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:
            # templates that reject a system turn: drop it, as HFLM does
            return render([m for m in chat_history if m["role"] != "system"])

    # -- loglikelihood ----------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """requests: ((context, continuation) strings, context ids, continuation ids), from TemplateLM."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results: list = [None] * len(requests)
        bar = _Progress(len(requests), "loglikelihood", disable_tqdm)

        def done(index, out):
            answer = (_sum32(out.logprobs), bool(out.is_greedy))
            results[index] = answer
            self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            bar.update(1)

        self._score(pairs, done, bar)
        bar.close()
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        pairs, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                pairs.append((ctx, cont))
                owner.append(r)
        totals = [0.0] * len(requests)
        left = [0] * len(requests)
        for r in owner:
            left[r] += 1
        bar = _Progress(len(requests), "loglikelihood_rolling", disable_tqdm)
        for r, n in enumerate(left):  # an empty document scores 0 and has no window
            if n == 0:
                self._rolling_done(requests, r, 0.0, bar)

        def done(index, out):
            r = owner[index]
            totals[r] += _sum32(out.logprobs)
            left[r] -= 1
            if left[r] == 0:
                self._rolling_done(requests, r, totals[r], bar)

        self._score(pairs, done, bar)
        bar.close()
        return totals

    def _rolling_done(self, requests, r, total, bar):
        self.cache_hook.add_partial("loglikelihood_rolling", requests[r].args, total)
        bar.update(1)

    def _score(self, pairs, done, bar):
        """Score (context ids, continuation ids) pairs; done(i, ScoreOutput) as each block finishes.

        Pairs that share a context become one group, so the context is computed once for all of
        its continuations (multiple choice); identical pairs are scored once. All groups go to the
        runtime at once: it cuts them into its planned blocks, alike contexts together.
        """
        limit = self.max_length + 1  # HFLM keeps the last max_length+1 tokens, dropping context from the left
        groups: dict[tuple, dict[tuple, list[int]]] = defaultdict(dict)
        for i, (ctx, cont) in enumerate(pairs):
            if not cont or len(cont) > self.max_length:
                raise ValueError(f"flexgen: continuation of {len(cont)} tokens; must be 1..{self.max_length}")
            ctx = tuple(ctx[-(limit - len(cont)):])
            groups[ctx].setdefault(tuple(cont), []).append(i)
        items = list(groups.items())

        def finished(results):
            tokens = 0
            for g, group_out in results:
                ctx, conts = items[g]
                tokens += len(ctx) + sum(len(c) for c in conts)
                for indices, out in zip(conts.values(), group_out):
                    for i in indices:
                        done(i, out)
            bar.add_tokens(tokens)

        self.llm.score_choices([(list(ctx), [list(c) for c in conts]) for ctx, conts in items], on_block=finished)

    # -- generation -----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list = [None] * len(requests)
        bar = _Progress(len(requests), "generate_until", disable_tqdm)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        by_kwargs: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_kwargs[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        for indices in by_kwargs.values():
            gen_kwargs = requests[indices[0]].args[1]
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise ValueError(f"flexgen: max_gen_toks {max_gen_toks} must be below the context {self.max_length}")
            params = self._sampling_params(kwargs, until, max_gen_toks)
            prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=self.max_length - max_gen_toks)
                       for i in indices]

            def finished(outs, indices=indices, prompts=prompts, until=until):
                tokens = 0
                for j, out in outs:
                    completion = out.outputs[0]
                    tokens += len(prompts[j]) + len(completion.token_ids)
                    text = postprocess_generated_text(self.tok_decode(completion.token_ids), until, None)
                    results[indices[j]] = text
                    self.cache_hook.add_partial("generate_until", requests[indices[j]].args, text)
                    bar.update(1)
                bar.add_tokens(tokens)

            self.llm.generate(prompts, params, on_block=finished)
        bar.close()
        return results

    @staticmethod
    def _sampling_params(kwargs: dict, until: list[str], max_gen_toks: int) -> SamplingParams:
        # greedy unless do_sample is set, as with HF generate (normalize_gen_kwargs zeroes temperature otherwise)
        sample = bool(kwargs.get("do_sample", False))
        temperature = float(kwargs.get("temperature", 1.0)) if sample else 0.0
        return SamplingParams(max_new_tokens=max_gen_toks, temperature=temperature,
                              top_p=float(kwargs.get("top_p", 1.0) or 1.0), top_k=int(kwargs.get("top_k", 0) or 0),
                              stop=tuple(s for s in until if s), seed=int(kwargs.get("seed", 0) or 0),
                              logprobs=False)


def _sum32(logprobs: list[float]) -> float:
    """A continuation's log-prob summed in float32, as HFLM sums it: a double sum would differ from
    `--model hf` by HF's own rounding (~1e-3 on a 4k-token wikitext window)."""
    return float(torch.tensor(logprobs, dtype=torch.float32).sum())


class _Progress:
    """tqdm over requests, with tokens/s next to the requests/s tqdm shows itself."""

    def __init__(self, total: int, kind: str, disable: bool):
        self.bar = tqdm(total=total, desc=f"flexgen {kind}", unit="req", disable=disable)
        self.start, self.tokens = time.perf_counter(), 0

    def update(self, n: int):
        self.bar.update(n)

    def add_tokens(self, n: int):
        self.tokens += n
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / seconds:,.0f} tok/s", refresh=True)

    def close(self):
        self.bar.close()
