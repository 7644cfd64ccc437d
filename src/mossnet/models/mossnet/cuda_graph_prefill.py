"""CUDA-graph capture of the prefill (the forward that fills a generation cache).

A prefill at batch 1 is bound by the host, not the GPU: on an H100 the eager `base` prefill of
2,048 tokens spends most of its time launching some 800 small kernels one by one from Python
(BENCHMARKS.md, "Host work per layer"), where a replayed CUDA graph costs the kernels' own time.

A graph has static shapes and a prompt's length varies, so prompts are padded on the right to a
*bucket*: the next power of two from :data:`SMALLEST_BUCKET` up to the largest bucket
(``config.prefill_block_size``, or :data:`LARGEST_BUCKET` when that is 0). The padding is
masked: a masked token is routed to no expert and enters no conv and no scan (spec section 2.8),
so the final states are the prompt's own, and the logits are read at the prompt's last position.
The result is the eager prefill's up to float rounding (the masked layout cuts the routed rows
into other segments).

One captured prefill serves one (batch, bucket, fresh or continued cache, autocast, policy). A
key is captured the *second* time it is met; the first call runs eagerly, so a one-off prompt
never pays for a capture (two eager runs' worth), and prompts of recurring lengths (generation
loops, evaluation, serving) replay. A prompt longer than the largest bucket runs in blocks of
that length, each continuing the cache (the blocked prefill's rule, captured). Prefills above
:data:`MAX_GRAPH_TOKENS` tokens (batch x bucket) stay eager: there the GPU work dominates, and
a captured graph would keep that much activation memory in its pool.

The cache works as in the captured decode step (``cuda_graph_decode.StaticCacheSlot``): the
graph writes the states into static tensors, and the caller's cache is pointed at them, not
copied; a later prefill of the same key first gives that cache private copies.

``MossNetForCausalLM.forward`` takes this path on its own when the execution policy's
``prefill_graph`` is on (CUDA, eval mode, no gradients, ``logits_to_keep=1``, token ids, no
``position_ids``, nothing else asked: what ``generate`` does). ``reset_graph_prefills(model)``
frees the captured prefills.
"""

from __future__ import annotations

import collections
import contextlib
import weakref

import torch

from ...cuda_graph import capture
from ...execution import ExecutionPolicy, capturing, tracing
from ...runtime import autocast_for_capture
from .cache import MossNetCache
from .cuda_graph_decode import CaptureConditions, StaticCacheSlot, _autocast_key

SMALLEST_BUCKET = 32
LARGEST_BUCKET = 2048  # when config.prefill_block_size is 0 (one pass at any length)
MAX_GRAPH_TOKENS = 16384  # batch x bucket; above it the GPU work dominates the host's


def largest_bucket(config) -> int:
    """The longest prompt (tokens per row) a captured prefill takes."""
    return config.prefill_block_size if config.prefill_block_size > 0 else LARGEST_BUCKET


def bucket_length(tokens: int, largest: int) -> int:
    """The bucket a prompt of ``tokens`` tokens is padded to: the next power of two, at least
    :data:`SMALLEST_BUCKET`, at most ``largest`` (a prompt longer than ``largest`` has none).

    Example:
        >>> bucket_length(1, 2048), bucket_length(33, 2048), bucket_length(2048, 2048), bucket_length(1500, 1536)
        (32, 64, 2048, 1536)
    """
    if tokens > largest:
        raise ValueError(f"a prompt of {tokens} tokens is longer than the largest bucket ({largest})")
    return min(max(SMALLEST_BUCKET, 1 << (max(tokens, 1) - 1).bit_length()), largest)


class CUDAGraphPrefill:
    """One captured prefill of a :class:`MossNetForCausalLM`: ``batch`` rows padded to
    ``bucket`` tokens, from a fresh cache (``continued=False``) or continuing one.

    Example (on a GPU)::

        prefill = CUDAGraphPrefill(model, batch=1, bucket=2048, continued=False)
        logits, cache = prefill.run(ids, None, None)   # (1, 1, vocab) fp32 and a filled cache
    """

    def __init__(self, model, batch: int, bucket: int, continued: bool, policy: ExecutionPolicy,
                 pool=None, warmup: int = 1):
        device = model.lm_head.weight.device
        self.model = model
        self.batch, self.bucket, self.continued, self.policy = batch, bucket, continued, policy
        self.conditions = CaptureConditions(model)
        self.slot = StaticCacheSlot(model.config, batch, device=device)
        self.static_cache = self.slot.static_cache
        self.ids = torch.zeros(batch, bucket, dtype=torch.long, device=device)
        self.mask = torch.ones(batch, bucket, dtype=torch.long, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)  # the prompt's last position
        # Autocast's cast cache is off during capture: see CUDAGraphDecoder (the same reason).
        # (A CPU model gets here only in tests, with an eager stand-in for ``capture``.)
        on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with on_device, torch.no_grad(), autocast_for_capture("cuda", self.conditions.autocast[1]):
            self.graph, self.logits = capture(self._step, warmup=max(1, warmup), pool=pool)
        self.static_cache.reset()
        self.model = None  # the graph holds what it needs; no reference cycle through the model

    def _step(self) -> torch.Tensor:
        model = self.model
        # seen_tokens only picks the path: > 0 continues from the static states, 0 starts from zeros.
        self.static_cache.seen_tokens = 1 if self.continued else 0
        embeds = model.model.embed_tokens(self.ids)
        out = model.model(inputs_embeds=embeds, attention_mask=self.mask, cache=self.static_cache,
                          use_cache=True, execution_policy=self.policy)
        h = out.last_hidden_state.index_select(1, self.last)  # (batch, 1, D)
        return model.lm_head(h.to(model.lm_head.weight.dtype)).float()

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            cache: MossNetCache | None) -> tuple[torch.Tensor, MossNetCache]:
        """input_ids: (batch, T) with T <= bucket, on the model's device (range-checked by the
        caller); attention_mask: (batch, T) or None; cache: the cache to continue (when
        ``continued``) or None / a fresh one. Returns (logits (batch, 1, vocab) fp32 of position
        T-1, a fresh tensor; the cache, now holding the states after the prompt)."""
        T = input_ids.shape[1]
        self.ids[:, :T].copy_(input_ids)
        if attention_mask is None:
            self.mask[:, :T].fill_(1)
        else:
            self.mask[:, :T].copy_(attention_mask)
        self.mask[:, T:].zero_()
        self.last.fill_(T - 1)
        if self.continued:
            self.slot.bind(cache)  # copies the carried states in
        else:
            cache = cache if cache is not None else MossNetCache.from_states([], [])
            self.slot.adopt(cache)  # the graph overwrites every state: nothing to copy in
            cache.seen_tokens = 0
        self.graph.replay()
        cache.seen_tokens += T
        return self.logits.clone(), cache

    def matches(self) -> bool:
        """Still valid: same weight tensors and the same autocast state as at capture."""
        return self.conditions.hold()


def graph_prefill_applicable(model, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache,
                             labels, output_hidden_states, output_router_stats, logits_to_keep,
                             policy: ExecutionPolicy) -> bool:
    """Whether ``MossNetForCausalLM.forward`` may take a captured prefill for this call (the
    first call of a key still runs eagerly: :func:`graph_prefill`)."""
    if not (policy.prefill_graph and input_ids is not None and inputs_embeds is None and input_ids.is_cuda
            and input_ids.dim() == 2 and logits_to_keep == 1):
        return False
    batch, T = input_ids.shape
    largest = largest_bucket(model.config)
    if T < 2 or batch * bucket_length(min(T, largest), largest) > MAX_GRAPH_TOKENS:
        return False
    return bool(
        (cache is not None or model.fills_cache(use_cache))
        and (cache is None or (cache.batch_size == batch and cache.ssm_states[0].is_cuda))
        and (attention_mask is None or attention_mask.shape == input_ids.shape)
        and position_ids is None
        and labels is None
        and not output_hidden_states
        and not output_router_stats
        and not model.training
        and not torch.is_grad_enabled()
        and not tracing()
        and not capturing()
    )


class _Prefills:
    """A model's captured prefills, the keys met once, and one memory pool per batch size.

    The prefills of one batch size share a pool. That is safe here because every replay's
    outputs are used at once (the logits are cloned, the states live outside the pool), so a
    graph that reuses another's memory can only overwrite outputs nobody reads again."""

    def __init__(self):
        self.graphs: dict = {}
        self.met: collections.Counter = collections.Counter()
        self.pools: dict = {}


# Per model, kept outside it so that ``copy.deepcopy`` / pickling never meets a graph.
_REGISTRIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def graph_prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  cache: MossNetCache | None, policy: ExecutionPolicy):
    """(logits (batch, 1, vocab), cache) of the prompt, through captured prefills; None when
    the prompt fits one bucket met for the first time (the caller runs the eager prefill).

    A prompt longer than the largest bucket runs in blocks of that many tokens, each continuing
    the cache of the one before (as ``MossNetForCausalLM._prefill_in_blocks``); a block whose key
    is met for the first time runs eagerly."""
    largest = largest_bucket(model.config)
    T = input_ids.shape[1]
    if T <= largest:
        return _prefill_one_bucket(model, input_ids, attention_mask, cache, policy)
    eager = policy.replace(prefill_graph=False)
    for start in range(0, T, largest):
        part = slice(start, min(start + largest, T))
        mask = None if attention_mask is None else attention_mask[:, part]
        captured = _prefill_one_bucket(model, input_ids[:, part], mask, cache, policy)
        if captured is None:
            out = model(input_ids=input_ids[:, part], attention_mask=mask, cache=cache, use_cache=True,
                        logits_to_keep=1, execution_policy=eager)
            captured = (out.logits, out.cache)
        logits, cache = captured
    return logits, cache


def _prefill_one_bucket(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        cache: MossNetCache | None, policy: ExecutionPolicy):
    """:func:`graph_prefill` of a prompt that fits the largest bucket."""
    batch, T = input_ids.shape
    continued = cache is not None and cache.seen_tokens > 0
    key = (batch, bucket_length(T, largest_bucket(model.config)), continued, _autocast_key(), policy)
    prefills = _REGISTRIES.get(model)
    if prefills is None:
        prefills = _REGISTRIES[model] = _Prefills()
    prefill = prefills.graphs.get(key)
    if prefill is not None and not prefill.matches():  # weights moved: every graph of this model is stale
        prefills.graphs.clear()
        prefill = None
    if prefill is None:
        prefills.met[key] += 1
        if prefills.met[key] < 2:
            return None
        pool = prefills.pools.get(batch)
        if pool is None and input_ids.is_cuda:
            pool = prefills.pools[batch] = torch.cuda.graph_pool_handle()
        prefill = prefills.graphs[key] = CUDAGraphPrefill(model, batch, key[1], continued, policy, pool=pool)
    model.model.check_token_ids(input_ids, policy)  # here, not in the graph: a replay reads no ids back
    return prefill.run(input_ids, attention_mask, cache)


def graph_prefills(model) -> dict:
    """{(batch, bucket, continued, autocast, policy): CUDAGraphPrefill} captured for ``model``."""
    prefills = _REGISTRIES.get(model)
    return dict(prefills.graphs) if prefills is not None else {}


def reset_graph_prefills(model) -> None:
    """Drop every captured prefill of ``model`` (frees their static caches and graph memory)."""
    _REGISTRIES.pop(model, None)
