#!/usr/bin/env python
"""Model-level benchmarks: MossNet against its anchors, side by side in one process, one card.

Models (``--tiny`` shrinks all of them to a few layers for the CPU smoke test):

* ``mossnet-base`` / ``mossnet-small``: the presets (``MossNetConfig.from_preset``).
* ``llama-135m``: transformers' ``LlamaForCausalLM`` at SmolLM2-135M's shape (hidden 576,
  30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152, tied embeddings, SDPA).
* ``ssm-1head``: the fair single-head SSM of spec section 2 -- the base config with
  ``ssm_experts=1, ssm_top_k=1, ssm_head_dim = k * P`` (same active value width).

Sections (``--sections``, all by default):

* ``train``   tokens/s, MFU and peak memory at B=8, T=2048 (bf16 autocast, fused AdamW, fp32
              master weights). MFU = (6 x active params + sequence-mixing FLOPs) x tokens/s /
              the bf16 matmul rate measured here with an 8192^3 product. Sequence-mixing FLOPs:
              the scan's useful work (k routed experts; SSD form: L(N+P) + 4NP per token, expert
              and layer, x3 for forward+backward) or causal attention (4 (T/2) d per token and
              layer, x3).
* ``prefill`` B=1, T=2048 latency (inference: bf16 weights, fp32 for the numerically sensitive
              parameters as ``from_pretrained(dtype=bf16)`` keeps them, bf16 autocast), eager and
              CUDA-graph-captured (MossNet), eager SDPA (Llama).
* ``decode``  after a 2048-token prompt: ms/step at B=1 and tokens/s at B=64, through the raw
              step (MossNet: eager, CUDA graph, CUDA graph of the torch.compile'd step; Llama: its
              best decode, static cache + torch.compile "reduce-overhead") and through
              ``generate()`` (greedy; time(1 + S new tokens) - time(1 new token), over S).
* ``profile`` one MossNet training step under torch.profiler: the top operators by device time.
* ``memory``  decode memory against context length (1k, 4k, 16k; B=1): the recurrent state
              (MossNet) or the KV cache (Llama) and the peak allocated during decode steps.

Usage:
    python benchmarks/bench_model.py --out results.json          # a GPU
    python benchmarks/bench_model.py --tiny --device cpu         # seconds, CI smoke test
Prints a markdown table last; writes every number (and any error) to the JSON file, after each
section, so a run cut short still leaves its results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import inspect
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mossnet import MossNetConfig, MossNetForCausalLM  # noqa: E402
from mossnet.execution import ExecutionPolicy  # noqa: E402
from mossnet.models.mossnet.cuda_graph_decode import reset_graph_decoders  # noqa: E402
from mossnet.models.parameter_count import parameter_counts, state_bytes_per_layer  # noqa: E402
from mossnet.ops.mosse import resolve_impl  # noqa: E402
from mossnet.cuda_graph import capture  # noqa: E402
from mossnet.runtime import (autocast_factory, autocast_for_capture, machine_info, resolve_device,  # noqa: E402
                             resolve_dtype)
from mossnet.train.cuda_graph_step import CapturedTrainStep  # noqa: E402

# ---------------------------------------------------------------------------- sizes


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(train_batch=2, train_len=32, train_steps=1, train_warmup=1, prefill_len=32, prefill_iters=1,
                    warmup=1, prompt_len=16, decode_batches=(1, 3), decode_steps=2, gen_steps=2, contexts=(16, 48),
                    mem_steps=1, matmul=128)
    return dict(train_batch=8, train_len=2048, train_steps=8, train_warmup=3, prefill_len=2048, prefill_iters=10,
                warmup=3, prompt_len=2048, decode_batches=(1, 64), decode_steps=64, gen_steps=32,
                contexts=(1024, 4096, 16384), mem_steps=8, matmul=8192)


def mossnet_config(preset: str, tiny: bool, **overrides) -> MossNetConfig:
    if tiny:
        base = dict(vocab_size=512, n_layers=2, d_model=64, ssm_head_dim=16, ssm_state_dim=16, mlp_hidden_dim=128)
        if preset == "small":
            base.update(d_model=48, mlp_hidden_dim=96)
        return MossNetConfig.from_preset("tiny", **{**base, **overrides})
    return MossNetConfig.from_preset(preset, **overrides)


def single_head_config(cfg: MossNetConfig) -> MossNetConfig:
    """Spec section 2: one expert (a single-head selective SSM) with head width k * P."""
    d = cfg.to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        d.pop(key, None)
    d.update(ssm_experts=1, ssm_top_k=1, ssm_head_dim=cfg.ssm_top_k * cfg.ssm_head_dim)
    return MossNetConfig(**d)


def llama_config(tiny: bool, vocab: int, max_len: int) -> LlamaConfig:
    if tiny:
        shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=vocab)
    else:
        shape = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152)
    return LlamaConfig(**shape, tie_word_embeddings=True, max_position_embeddings=max_len, rope_theta=100000.0,
                       attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=0)


def converted_config(tiny: bool) -> MossNetConfig:
    """The shape of a model converted from SmolLM2-135M (spec section 8): every token to all 9
    experts (``state_update="all"``, k = E = 9), head and state width 64, a dense SwiGLU MLP."""
    if tiny:
        return mossnet_config("base", True, ssm_experts=3, ssm_top_k=3, state_update="all", mlp_experts=1,
                              mlp_top_k=1)
    return MossNetConfig.from_preset("base", n_layers=30, ssm_experts=9, ssm_top_k=9, state_update="all",
                                     mlp_experts=1, mlp_top_k=1, mlp_hidden_dim=1536)


def build(name: str, tiny: bool, device, max_len: int = 32768):
    """A fresh fp32 model by benchmark name (``mossnet-converted``: see :func:`converted_config`)."""
    torch.manual_seed(0)
    if name == "mossnet-base":
        model = MossNetForCausalLM(mossnet_config("base", tiny))
    elif name == "mossnet-converted":
        model = MossNetForCausalLM(converted_config(tiny))
    elif name == "mossnet-small":
        model = MossNetForCausalLM(mossnet_config("small", tiny))
    elif name == "ssm-1head":
        model = MossNetForCausalLM(single_head_config(mossnet_config("base", tiny)))
    elif name == "llama-135m":
        vocab = mossnet_config("base", tiny).vocab_size
        model = LlamaForCausalLM(llama_config(tiny, vocab, max_len))
    else:
        raise ValueError(name)
    if isinstance(model, MossNetForCausalLM):  # ids below are generated in range: no host sync
        model.execution_policy = model.execution_policy.replace(validate_token_ids=False)
    return model.to(device)


def is_mossnet(model) -> bool:
    return isinstance(model, MossNetForCausalLM)


# ---------------------------------------------------------------------------- accounting


def mixing_flops_per_token(model, seq_len: int) -> float:
    """Forward FLOPs per token of the sequence mixing that 6N does not count."""
    c = model.config
    if is_mossnet(model):
        k = c.ssm_top_k if c.state_update == "routed" else c.ssm_experts
        N, P, L = c.ssm_state_dim, c.ssm_head_dim, c.chunk_size
        return c.n_layers * k * (L * (N + P) + 4 * N * P)
    d_attn = c.num_attention_heads * (c.hidden_size // c.num_attention_heads)
    return c.num_hidden_layers * 4 * (seq_len / 2) * d_attn


def state_bytes(model, context: int, batch: int = 1) -> int:
    """Bytes a sequence carries while decoding: MossNet's recurrent state (fp32, constant) or
    Llama's KV cache (in the weights' dtype: bf16 on the GPU) at ``context`` tokens."""
    c = model.config
    element = 4 if is_mossnet(model) else model.lm_head.weight.element_size()
    return state_bytes_per_layer(c, context, element) * c.num_hidden_layers * batch


# ---------------------------------------------------------------------------- timing


class Clock:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def span(self, fn, iters: int = 1) -> float:
        """Seconds for ``iters`` calls of fn (device work included)."""
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return time.perf_counter() - t0

    def median(self, fn, iters: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        return statistics.median(self.span(fn) for _ in range(iters))


def reset_peak(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def allocated(device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak(device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def autocast(device):
    """The trainer's ``auto`` autocast (``mossnet.runtime``): bf16 on CUDA, none on the CPU (the
    smoke test: bf16 is slow there)."""
    return autocast_factory(device, "auto")()


def to_inference(model):
    """bf16 weights except the numerically sensitive ones (what ``from_pretrained(dtype=bf16)``
    does with ``_keep_in_fp32_modules``); eval mode. fp32 on the CPU."""
    if model.device.type != "cuda":
        return model.eval()
    model.to(torch.bfloat16)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, p in model.named_parameters():
        if any(k in name for k in keep):
            p.data = p.data.float()
    return model.eval()


def cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def randint(vocab, shape, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g).to(device)


# ---------------------------------------------------------------------------- sections


def bench_matmul(device, n: int, clock: Clock) -> float:
    dtype = resolve_dtype("auto", device)  # bf16 on CUDA, fp32 on the CPU
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = clock.median(lambda: a @ b, iters=10 if device.type == "cuda" else 2, warmup=2)
    return 2 * n**3 / seconds


def reported_error(err: Exception, limit: int = 600, print_traceback: bool = True) -> str:
    """A failed measurement's one-line entry for the results (the traceback goes to the log):
    a broken job must not hide the other numbers."""
    if print_traceback:
        traceback.print_exc()
    return f"{type(err).__name__}: {err}"[:limit]


def bench_train(name, tiny, device, sz, clock, matmul_rate) -> dict:
    try:
        return _bench_train(name, tiny, device, sz, clock, matmul_rate, scan_impl=None)
    except Exception as err:  # noqa: BLE001  (a broken fast path must not hide the other numbers)
        if not name.startswith(("mossnet", "ssm")) or name.endswith("-graph"):
            raise
        error = reported_error(err, limit=400)
        reset_peak(device)
        out = _bench_train(name, tiny, device, sz, clock, matmul_rate, scan_impl="chunked")
        out["fast_path_error"] = error
        return out


def _bench_train(name, tiny, device, sz, clock, matmul_rate, scan_impl) -> dict:
    """Training tokens/s, MFU and peak memory. ``NAME-graph``: model NAME with the whole step
    (forward, backward, AdamW) replayed from a CUDA graph (``mossnet.train.cuda_graph_step``,
    what ``mossnet train --cuda-graph`` runs)."""
    graphed = name.endswith("-graph")
    model = build(name.removesuffix("-graph"), tiny, device).train()
    if scan_impl is not None and is_mossnet(model):
        model.execution_policy = model.execution_policy.replace(scan_impl=scan_impl)
    counts = parameter_counts(model)
    B, T = sz["train_batch"], sz["train_len"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")
    ids = randint(model.config.vocab_size, (B, T), device)

    if graphed:
        if device.type != "cuda":
            raise RuntimeError("the -graph training jobs need CUDA")

        def loss_fn(input_ids, labels):
            with autocast_for_capture("cuda", torch.bfloat16):
                loss = model(input_ids=input_ids, labels=labels).loss
            return loss, loss, None, {}

        captured = CapturedTrainStep(model, opt, loss_fn, warmup_steps=2)
        ids3 = ids.unsqueeze(0)

        def step():
            captured(ids3, ids3)
    else:
        def step():
            with autocast(device):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    reset_peak(device)
    for _ in range(sz["train_warmup"]):
        step()
    seconds = clock.span(step, sz["train_steps"])
    tokens_per_s = B * T * sz["train_steps"] / seconds
    flops_per_token = 6 * counts["active"] + 3 * mixing_flops_per_token(model, T)
    out = {
        "model": name, "params_total": counts["total"], "params_active": counts["active"],
        "step_ms": seconds / sz["train_steps"] * 1e3, "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token, "mfu": flops_per_token * tokens_per_s / matmul_rate,
        "peak_mem_gb": peak(device) / 2**30,
        "state_bytes_per_layer": (state_bytes_per_layer(model.config) if is_mossnet(model) else None),
        "scan_impl": (scan_impl or resolve_impl("auto", ids.float())) if is_mossnet(model) else None,
        "execution_policy": model.execution_policy.as_dict() if is_mossnet(model) else None,
        "cuda_graph": graphed,
    }
    del model, opt
    reset_peak(device)
    return out


def profile_train(name, tiny, device, sz) -> dict:
    """Where a training step's device time goes: the top operators by CUDA time (one step)."""
    from torch.profiler import ProfilerActivity, profile

    model = build(name, tiny, device).train()
    B, T = sz["train_batch"], sz["train_len"]
    ids = randint(model.config.vocab_size, (B, T), device)

    def step():
        with autocast(device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, "self_" + key, 0) for e in events)
    top = [{"op": e.key[:80], "self_ms": getattr(e, "self_" + key, 0) / 1e3, "total_ms": getattr(e, key, 0) / 1e3,
            "calls": e.count} for e in sorted(events, key=lambda e: getattr(e, "self_" + key, 0), reverse=True)[:25]]
    del model
    reset_peak(device)
    return {"model": name, "self_total_ms": total / 1e3, "top_self": top}


def capture_prefill(model, ids):
    """A CUDA graph of the MossNet prefill forward (static shapes; the prefill is sync-free)."""
    def run():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits

    return capture(run, warmup=2)[0]


def bench_bucket_graph_prefill(model, ids, sz, clock) -> dict:
    """The policy's ``prefill_graph`` path (a graph per prompt-length bucket, captured the second
    time a bucket is met; the warm-up calls capture it): at the prompt's length, and at a length
    that is no power of two (its padding to the bucket is computed and masked), beside that
    length's eager time."""
    eager = model.execution_policy.replace(prefill_graph=False)
    T = ids.shape[1]
    odd = ids[:, : max(T * 3 // 4 - 36, 2)]
    out = {"odd_tokens": odd.shape[1]}
    timed = {"bucket_graph_ms": (ids, True), "odd_eager_ms": (odd, False), "odd_bucket_graph_ms": (odd, True)}
    try:
        for key, (prompt, graphed) in timed.items():
            model.execution_policy = eager.replace(prefill_graph=graphed)
            run = lambda: model(input_ids=prompt, use_cache=True, logits_to_keep=1)  # noqa: E731
            out[key] = clock.median(run, sz["prefill_iters"], max(2, sz["warmup"])) * 1e3
    except Exception as err:  # noqa: BLE001
        out["bucket_graph_error"] = reported_error(err, limit=400, print_traceback=False)
    finally:
        model.execution_policy = eager
    return out


def bench_prefill(name, tiny, device, sz, clock, graph: bool = False) -> dict:
    model = to_inference(build(name, tiny, device))
    T = sz["prefill_len"]
    ids = randint(model.config.vocab_size, (1, T), device)
    out = {"model": name, "batch": 1, "tokens": T}
    with torch.no_grad(), autocast(device):
        def run():
            return model(input_ids=ids, use_cache=True, logits_to_keep=1)

        out["eager_ms"] = clock.median(run, sz["prefill_iters"], sz["warmup"]) * 1e3
        if graph and is_mossnet(model) and device.type == "cuda":
            try:
                graph = capture_prefill(model, ids)
                out["graph_ms"] = clock.median(graph.replay, sz["prefill_iters"], sz["warmup"]) * 1e3
                del graph
            except Exception as err:  # noqa: BLE001
                out["graph_error"] = reported_error(err, limit=400, print_traceback=False)
        if is_mossnet(model) and device.type == "cuda":
            out.update(bench_bucket_graph_prefill(model, ids, sz, clock))
    out["best_ms"] = min(out[k] for k in ("eager_ms", "graph_ms", "bucket_graph_ms") if k in out)
    del model
    reset_peak(device)
    return out


def mossnet_decode(model, B, sz, device, clock, mode: str) -> dict:
    """Raw step: prefill a prompt, then time ``decode_steps`` one-token forwards (greedy)."""
    default = model.execution_policy
    model.execution_policy = default.replace(decode_graph=mode != "eager", decode_graph_compile=mode == "graph+compile")
    reset_graph_decoders(model)
    prompt = randint(model.config.vocab_size, (B, sz["prompt_len"]), device, seed=B)
    with torch.no_grad(), autocast(device):
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = out.cache
        state = {"next": out.logits[:, -1:].argmax(-1)}

        def step():
            logits = model(input_ids=state["next"], cache=cache).logits
            state["next"] = logits[:, -1:].argmax(-1)

        t_capture = clock.span(step)  # first step: captures (and compiles) the graph
        for _ in range(sz["warmup"]):
            step()
        seconds = clock.span(step, sz["decode_steps"])
    model.execution_policy = default
    return {"ms_per_step": seconds / sz["decode_steps"] * 1e3, "tokens_per_s": B * sz["decode_steps"] / seconds,
            "first_step_s": t_capture}


def llama_decode(model, B, sz, device, clock, compiled: bool) -> dict:
    """Llama's best decode: a static KV cache and the forward compiled with CUDA graphs
    ("reduce-overhead", the compiled call ``generate`` itself uses)."""
    from transformers import StaticCache

    prompt = randint(model.config.vocab_size, (B, sz["prompt_len"]), device, seed=B)
    n = sz["decode_steps"] + 8
    cache = StaticCache(config=model.config, max_cache_len=sz["prompt_len"] + n)
    kw = {cache_kwarg(model): cache}
    fwd = model.get_compiled_call(None) if compiled else model.__call__
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **kw)
        state = {"next": out.logits[:, -1:].argmax(-1)}

        def step():
            logits = fwd(input_ids=state["next"], use_cache=True, **kw).logits
            state["next"] = logits[:, -1:].argmax(-1).clone()

        t_first = clock.span(step)
        for _ in range(sz["warmup"]):
            step()
        seconds = clock.span(step, sz["decode_steps"])
    return {"ms_per_step": seconds / sz["decode_steps"] * 1e3, "tokens_per_s": B * sz["decode_steps"] / seconds,
            "first_step_s": t_first}


def generate_decode(model, B, sz, device, clock) -> dict:
    """generate(): time(1 + S new tokens) - time(1 new token), over S (greedy)."""
    prompt = randint(model.config.vocab_size, (B, sz["prompt_len"]), device, seed=100 + B)
    S = sz["gen_steps"]
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if not is_mossnet(model) and device.type == "cuda":
        kwargs["cache_implementation"] = "static"  # generate then compiles its forward

    def gen(n):
        return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)

    with torch.no_grad(), (autocast(device) if is_mossnet(model) else contextlib.nullcontext()):
        t_first = clock.span(lambda: gen(1 + S))  # warm-up: graph capture / compilation
        reps = 2 if device.type == "cuda" else 1
        short = min(clock.span(lambda: gen(1)) for _ in range(reps))
        long = min(clock.span(lambda: gen(1 + S)) for _ in range(reps))
    seconds = max(long - short, 1e-9)
    return {"ms_per_step": seconds / S * 1e3, "tokens_per_s": B * S / seconds, "first_call_s": t_first}


def bench_decode(name, tiny, device, sz, clock, modes, deadline) -> list:
    model = to_inference(build(name, tiny, device))
    rows = []
    for B in sz["decode_batches"]:
        for mode in modes:
            if deadline is not None and time.time() > deadline:
                rows.append({"model": name, "batch": B, "path": mode, "skipped": "time budget"})
                continue
            row = {"model": name, "batch": B, "path": mode}
            try:
                if mode == "generate":
                    row.update(generate_decode(model, B, sz, device, clock))
                elif is_mossnet(model):
                    row.update(mossnet_decode(model, B, sz, device, clock, mode))
                else:
                    row.update(llama_decode(model, B, sz, device, clock, compiled=mode == "static+compile"))
            except Exception as err:  # noqa: BLE001
                row["error"] = reported_error(err)
            rows.append(row)
            print(f"  decode {row}", flush=True)
            reset_peak(device)
    del model
    reset_peak(device)
    return rows


def bench_memory(name, tiny, device, sz, clock) -> list:
    """Decode memory against context. A short warm-up decode first, so one-time allocations (the
    captured decode step's memory pool, library workspaces) are not charged to the first context;
    they are reported once as ``warmup_resident_mb``."""
    model = to_inference(build(name, tiny, device))
    rows = []
    reset_peak(device)
    empty = allocated(device)
    with torch.no_grad(), autocast(device):
        warm = randint(model.config.vocab_size, (1, 8), device, seed=1)
        out = model(input_ids=warm, use_cache=True, logits_to_keep=1)
        kw = {"cache": out.cache} if is_mossnet(model) else {cache_kwarg(model): out.get("past_key_values")}
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(2):
            nxt = model(input_ids=nxt, use_cache=True, **kw).logits[:, -1:].argmax(-1)
        del out, kw, nxt
    clock.sync()
    reset_peak(device)
    warmup_resident_mb = (allocated(device) - empty) / 2**20
    for ctx in sz["contexts"]:
        row = {"model": name, "context": ctx, "state_bytes": state_bytes(model, ctx)}
        try:
            prompt = randint(model.config.vocab_size, (1, ctx), device, seed=ctx)
            reset_peak(device)
            weights = allocated(device)
            with torch.no_grad(), autocast(device):
                if is_mossnet(model):
                    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
                    cache = out.cache
                    row["measured_state_bytes"] = cache.nbytes()
                    kw = {"cache": cache}
                else:
                    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
                    cache = out.get("past_key_values")
                    cache = out.get("cache") if cache is None else cache
                    kw = {cache_kwarg(model): cache}
                    try:
                        row["measured_state_bytes"] = sum(
                            t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
                    except AttributeError:
                        pass
                nxt = out.logits[:, -1:].argmax(-1)
                del out
                reset_peak(device)
                before = allocated(device)
                for _ in range(sz["mem_steps"]):
                    nxt = model(input_ids=nxt, use_cache=True, **kw).logits[:, -1:].argmax(-1)
                clock.sync()
            row["decode_peak_mb_above_weights"] = (peak(device) - weights) / 2**20
            row["decode_resident_mb_above_weights"] = (before - weights) / 2**20
            row["warmup_resident_mb"] = warmup_resident_mb
            del cache, kw
        except Exception as err:  # noqa: BLE001
            row["error"] = reported_error(err)
        rows.append(row)
        print(f"  memory {row}", flush=True)
        reset_peak(device)
    del model
    reset_peak(device)
    return rows


# ---------------------------------------------------------------------------- report


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def table(results: dict) -> str:
    lines = []
    env = results["env"]
    lines.append(f"device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
                 f"scan impl {env.get('scan_impl')}; bf16 matmul {env.get('matmul_tflops', 0):.0f} TFLOP/s")
    if results.get("train"):
        lines += ["", "| training (B x T = %s) | params total / active | tokens/s | step ms | MFU | peak mem GB |"
                  % results.get("train_shape", "?"), "| --- | --- | --- | --- | --- | --- |"]
        for r in results["train"]:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error'][:80]} | | | | |")
                continue
            lines.append(f"| {r['model']} | {r['params_total'] / 1e6:.1f}M / {r['params_active'] / 1e6:.1f}M | "
                         f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {100 * r['mfu']:.1f}% | {r['peak_mem_gb']:.2f} |")
    if results.get("prefill"):
        lines += ["", "| prefill B=1 | tokens | eager ms | CUDA graph ms | bucket graph ms | best ms |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in results["prefill"]:
            if r.get("error") or r.get("skipped"):
                lines.append(f"| {r['model']} | {(r.get('error') or r.get('skipped'))[:90]} | | | | |")
                continue
            lines.append(f"| {r['model']} | {r.get('tokens')} | {fmt(r.get('eager_ms'), 2)} | "
                         f"{fmt(r.get('graph_ms'), 2)} | {fmt(r.get('bucket_graph_ms'), 2)} | {fmt(r.get('best_ms'), 2)} |")
            if r.get("odd_tokens"):
                lines.append(f"| {r['model']} | {r['odd_tokens']} | {fmt(r.get('odd_eager_ms'), 2)} | | "
                             f"{fmt(r.get('odd_bucket_graph_ms'), 2)} | |")
    if results.get("decode"):
        lines += ["", "| decode after %s-token prompt | batch | path | ms/step | tokens/s |" % results.get("prompt_len"),
                  "| --- | --- | --- | --- | --- |"]
        for r in results["decode"]:
            extra = r.get("error") or r.get("skipped")
            if extra:
                lines.append(f"| {r['model']} | {r['batch']} | {r['path']} | {extra[:90]} | |")
            else:
                lines.append(f"| {r['model']} | {r['batch']} | {r['path']} | {r['ms_per_step']:.3f} | "
                             f"{r['tokens_per_s']:,.0f} |")
    if results.get("memory"):
        lines += ["", "| decode memory B=1 | context | state / KV cache MB | decode peak MB above weights |",
                  "| --- | --- | --- | --- |"]
        for r in results["memory"]:
            extra = r.get("error") or r.get("skipped")
            if extra:
                lines.append(f"| {r['model']} | {r.get('context')} | {extra[:90]} | |")
                continue
            lines.append(f"| {r['model']} | {r['context']} | {r['state_bytes'] / 2**20:.2f} | "
                         f"{fmt(r.get('decode_peak_mb_above_weights'), 1)} |")
    return "\n".join(lines)


def run_job(job: str, args, device, sz, clock, rate, deadline) -> tuple[str, list]:
    """One unit of work: ``section:model``. Returns (result section, rows)."""
    section, name, *batch = job.split(":")
    if batch:  # "decode:model:B" runs one batch size
        sz = {**sz, "decode_batches": (int(batch[0]),)}
    cuda = device.type == "cuda"

    def one(fn):
        try:
            return [fn()]
        except Exception as err:  # noqa: BLE001
            return [{"model": name, "error": reported_error(err)}]

    if section == "train":
        return "train", one(lambda: bench_train(name, args.tiny, device, sz, clock, rate))
    if section == "prefill":
        return "prefill", one(lambda: bench_prefill(name, args.tiny, device, sz, clock))
    if section == "prefill-graph":
        rows = one(lambda: bench_prefill(name, args.tiny, device, sz, clock, graph=True))
        return "prefill", [{**r, "model": f"{name} (+graph)"} for r in rows]
    if section == "decode":
        if name.startswith("mossnet"):
            modes = ("graph", "eager", "generate") if cuda else ("eager", "generate")
        else:
            modes = ("static+compile", "generate") if cuda else ("static", "generate")
        return "decode", bench_decode(name, args.tiny, device, sz, clock, modes, None)
    if section == "decode-compiled":
        return "decode", bench_decode(name, args.tiny, device, sz, clock, ("graph+compile",), deadline)
    if section == "profile":
        return "profile", one(lambda: profile_train(name, args.tiny, device, sz))
    if section == "memory":
        try:
            return "memory", bench_memory(name, args.tiny, device, sz, clock)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            return "memory", [{"model": name, "context": None, "state_bytes": 0, "error": str(err)[:600]}]
    raise ValueError(f"unknown job {job!r}")


def jobs_for(args, device) -> list[str]:
    sections = set(args.sections.split(","))
    jobs = []
    if "train" in sections:
        models = args.train_models.split(",")
        if device.type != "cuda":  # CUDA graphs need CUDA
            models = [m for m in models if not m.endswith("-graph")]
        jobs += [f"train:{m}" for m in models]
    if "prefill" in sections:
        jobs += ["prefill:mossnet-base", "prefill:llama-135m"]
    batches = sizes(args.tiny)["decode_batches"]
    if "decode" in sections:
        jobs += [f"decode:mossnet-base:{b}" for b in batches]
    if "memory" in sections:
        jobs += ["memory:mossnet-base", "memory:llama-135m"]
    if "profile" in sections:
        jobs += ["profile:mossnet-base"]
    if "decode" in sections:  # Llama's compilation takes the longest: after the cheap jobs
        jobs += [f"decode:llama-135m:{b}" for b in batches]
    if "extras" in sections and device.type == "cuda":
        # Last, and only while time is left: a captured prefill; the decode step compiled by
        # torch.compile before its capture (minutes of compilation).
        jobs += ["prefill-graph:mossnet-base", "decode-compiled:mossnet-base"]
    return jobs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models and shapes (CPU smoke test)")
    ap.add_argument("--device", default=str(resolve_device("auto")))
    ap.add_argument("--out", default=None, help="JSON results path")
    ap.add_argument("--sections", default="train,prefill,decode,memory,profile,extras")
    ap.add_argument("--train-models", default="mossnet-base,mossnet-base-graph,mossnet-converted,mossnet-small,"
                    "llama-135m,llama-135m-graph,ssm-1head,ssm-1head-graph",
                    help="training jobs; NAME-graph replays the whole step from a CUDA graph (CUDA only)")
    ap.add_argument("--time-budget", type=float, default=420.0,
                    help="seconds after the start past which the extras (captured prefill, compiled decode) are skipped")
    ap.add_argument("--hard-budget", type=float, default=1e9,
                    help="seconds after the start past which no job starts (and running ones are stopped)")
    ap.add_argument("--no-isolate", action="store_true",
                    help="run every job in this process (default on CUDA: one child process per job, so that "
                         "a device fault in one job cannot take the others down)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--job-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--matmul-rate", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    if args.tiny and args.device == "cpu":
        torch.set_num_threads(1)  # tiny shapes: threading costs more than it gives
    try:
        if args.job:
            device = torch.device(args.device)
            section, rows = run_job(args.job, args, device, sizes(args.tiny), Clock(device), args.matmul_rate,
                                    args.deadline)
            Path(args.job_out).write_text(json.dumps({"section": section, "rows": rows}, default=str))
            return {}
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def run_isolated(job: str, args, rate: float, deadline: float, timeout: float) -> tuple[str, list]:
    import tempfile

    from mossnet import isolated_jobs

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "job.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--job", job,
               "--job-out", str(out), "--matmul-rate", repr(rate), "--deadline", repr(deadline)]
        if args.tiny:
            cmd.append("--tiny")
        section = job.split(":")[0].split("-")[0]
        failed = {"model": job, "batch": "-", "path": "-", "context": None, "state_bytes": 0}
        job = isolated_jobs.run_job(cmd, timeout=timeout, capture=False)  # its progress lines go to this terminal
        if job.timeout is not None:
            return section, [{**failed, "error": f"job timed out after {timeout:.0f} s"}]
        if job.returncode != 0 or not out.exists():
            return section, [{**failed, "error": f"job process exited with {job.returncode}"}]
        data = json.loads(out.read_text())
        return data["section"], data["rows"]


def run(args, argv) -> dict:
    t_start = time.time()
    deadline = t_start + args.time_budget
    device = torch.device(args.device)
    sz = sizes(args.tiny)
    clock = Clock(device)
    machine = machine_info(device)
    results: dict = {"env": {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": machine["gpu"] if device.type == "cuda" else machine["cpu"],
        "torch": machine["torch"], "transformers": machine["transformers"], "python": machine["python"],
        "tiny": args.tiny, "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }, "train_shape": f"{sz['train_batch']} x {sz['train_len']}", "prompt_len": sz["prompt_len"]}
    try:
        import triton

        results["env"]["triton"] = triton.__version__
    except ImportError:
        pass
    results["env"]["scan_impl"] = resolve_impl("auto", torch.zeros(1, device=device))
    results["env"]["execution_policy"] = ExecutionPolicy.build().as_dict()
    out_path = Path(args.out) if args.out else None

    def save():
        if out_path:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1, default=str))

    rate = bench_matmul(device, sz["matmul"], clock)
    results["env"]["matmul_tflops"] = rate / 1e12
    print(f"matmul: {rate / 1e12:.1f} TFLOP/s", flush=True)
    save()

    isolate = device.type == "cuda" and not args.no_isolate
    hard = t_start + args.hard_budget
    for job in jobs_for(args, device):
        extra = job.startswith(("prefill-graph", "decode-compiled"))
        left = hard - time.time()
        if (extra and time.time() > deadline) or left < 20:
            section = job.split(":")[0].split("-")[0]
            results.setdefault(section, []).append(
                {"model": job, "batch": "-", "path": "-", "context": None, "state_bytes": 0, "skipped": "time budget"})
            continue
        t0 = time.time()
        if isolate:
            section, rows = run_isolated(job, args, rate, deadline, timeout=min(300.0, left))
        else:
            section, rows = run_job(job, args, device, sz, clock, rate, deadline)
        results.setdefault(section, []).extend(rows)
        results.setdefault("job_seconds", {})[job] = time.time() - t0
        for r in rows:
            print(f"  {section} {r}", flush=True)
        save()
    results["env"]["wall_s"] = time.time() - t_start
    save()
    print()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
