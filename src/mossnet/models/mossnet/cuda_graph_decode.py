"""CUDA-graph capture of the one-token decode step (SPEC §5, ``step``; decode is
launch-bound).

A MossNet decode step is ~1000 small kernels (router, gathers of the routed experts, conv
window, SSM update, gated norm, MoE-MLP, for every layer). Launched one by one from Python the
step costs milliseconds of CPU time; replayed as one CUDA graph it costs the kernels' run time.

:class:`CUDAGraphDecoder` captures, for one batch size,

    token ids (batch, 1) -> embedding -> ``MossNetModel._decode_step`` -> LM head -> logits

with static buffers: the ids are copied in, the graph is replayed, the logits are copied out.
The recurrent state lives in the decoder's own static :class:`MossNetCache` tensors. A cache
that comes to the decoder is *bound*: its state is copied into the static tensors once and its
``conv_states`` / ``ssm_states`` lists are pointed at them, so later steps run in place with no
copies. If another cache is bound later, the previous one first gets private copies back, so
two caches never share state.

``MossNetForCausalLM.forward`` uses this automatically for a one-token step on CUDA when the
model is in eval mode, gradients are off and nothing but logits is asked for (that is what
``generate`` does), and its execution policy's ``decode_graph`` is on: turn it off with
``model.execution_policy = model.execution_policy.replace(decode_graph=False)`` (or the
shorthand ``model.cuda_graph_decode = False``); ``decode_graph_compile`` (``cuda_graph_compile``)
compiles the step first. Decoders are kept per (batch size, autocast state, policy) and rebuilt
when the model's weights are replaced (``.to()``); ``reset_graph_decoders(model)`` frees them.

Token ids of graph-replayed steps are not range-checked (that would need a host sync per
token); prompts are checked at prefill, and ids sampled by ``generate`` are in range.
"""

from __future__ import annotations

import weakref

import torch

from ...cuda_graph import capture
from ...execution import ExecutionPolicy, capturing, tracing
from ...runtime import autocast_for_capture
from .cache import MossNetCache


class CaptureConditions:
    """What a graph captured from ``model`` depends on besides its static buffers: the weights'
    addresses and the autocast state at capture. A graph reads weights at fixed addresses, and
    ``model.to(...)`` moves every parameter, so watching the first and last few catches it
    (in-place updates such as ``load_state_dict`` keep the addresses and are fine). Shared by the
    captured decode step and the captured prefill."""

    def __init__(self, model):
        params = list(model.parameters())
        self._watched = params[:4] + params[-4:]
        self._signature = self._addresses()
        self.autocast = _autocast_key()

    def _addresses(self) -> tuple:
        return tuple((p.data_ptr(), p.dtype) for p in self._watched)

    def hold(self) -> bool:
        """Still as at capture: the same weight tensors and the same autocast state."""
        return self._addresses() == self._signature and _autocast_key() == self.autocast


def _autocast_key(device_type: str = "cuda") -> tuple:
    if torch.is_autocast_enabled(device_type):
        return (True, torch.get_autocast_dtype(device_type))
    return (False, None)


class StaticCacheSlot:
    """Static cache tensors that one :class:`MossNetCache` at a time lives in.

    ``bind(cache)`` copies the cache's state into the static tensors once and points the
    cache's ``conv_states`` / ``ssm_states`` at them (later steps update them in place). The
    cache bound before gets private copies back first, so two caches never share state.
    Device-agnostic (the CPU tests exercise it).
    """

    def __init__(self, config, batch_size: int, device=None):
        self.static_cache = MossNetCache(config, batch_size, device=device)
        self.batch_size = batch_size
        self._bound: weakref.ref | None = None

    def is_bound(self, cache: MossNetCache) -> bool:
        """True when ``cache`` already holds the static tensors."""
        static = self.static_cache
        if len(cache.conv_states) != len(static.conv_states):  # an empty cache holds nothing yet
            return False
        return all(a is b for a, b in zip(cache.conv_states, static.conv_states)) and all(
            a is b for a, b in zip(cache.ssm_states, static.ssm_states)
        )

    def bind(self, cache: MossNetCache) -> None:
        if self.is_bound(cache):
            return
        if cache.batch_size != self.batch_size:
            raise ValueError(f"cache holds batch {cache.batch_size} but the captured step has batch {self.batch_size}")
        self._release_previous(cache)
        static = self.static_cache
        for dst, src in zip(static.conv_states + static.ssm_states, cache.conv_states + cache.ssm_states):
            dst.copy_(src)
        self._point(cache)

    def adopt(self, cache: MossNetCache) -> None:
        """Like :meth:`bind`, without copying ``cache``'s state in: for a graph that overwrites
        every state (a prefill from a fresh cache). ``cache`` may be empty (no tensors yet)."""
        if self.is_bound(cache):
            return
        self._release_previous(cache)
        self._point(cache)

    def _release_previous(self, cache: MossNetCache) -> None:
        """The cache bound before, if still bound and not ``cache``, gets private copies."""
        previous = self._bound() if self._bound is not None else None
        if previous is not None and previous is not cache and self.is_bound(previous):
            previous.conv_states = [t.clone() for t in previous.conv_states]
            previous.ssm_states = [t.clone() for t in previous.ssm_states]

    def _point(self, cache: MossNetCache) -> None:
        cache.conv_states = list(self.static_cache.conv_states)
        cache.ssm_states = list(self.static_cache.ssm_states)
        self._bound = weakref.ref(cache)


class CUDAGraphDecoder:
    """One captured decode step of a :class:`MossNetForCausalLM` for a fixed batch size.

    Args:
        model: a ``MossNetForCausalLM`` on a CUDA device (eval mode).
        batch_size: rows per step.
        policy: the execution policy the captured step runs with (None: the model's).
        pool: a ``torch.cuda.graph_pool_handle()`` (only for graphs replayed in capture order), or None.
        compile: run the step through ``torch.compile`` (default mode: fused kernels, no
            compiler-managed graphs) before capturing it; fewer, larger kernels.
        warmup: eager runs on a side stream before capture (allocator, cuBLAS handles, compile).

    Example (on a GPU)::

        dec = CUDAGraphDecoder(model, batch_size=1)
        logits = dec.decode(next_ids, cache)   # (1, 1, vocab) fp32; cache updated in place
    """

    def __init__(self, model, batch_size: int, pool=None, compile: bool = False, warmup: int = 2,
                 policy: ExecutionPolicy | None = None):
        device = model.lm_head.weight.device
        if device.type != "cuda":
            raise ValueError(f"CUDAGraphDecoder needs a CUDA model, got one on {device}")
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.compiled = compile
        self.policy = model.execution_policy if policy is None else policy
        self.conditions = CaptureConditions(model)
        self.slot = StaticCacheSlot(model.config, batch_size, device=device)
        self.static_cache = self.slot.static_cache
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        step = self._step
        if compile:
            step = torch.compile(self._step, dynamic=False)
        self._run = step
        # Under autocast, capture with its cast cache off (PyTorch's CUDA-graph notes ask for it):
        # with the cache on, the graph would read weight casts that the caller's autocast block
        # made and frees on exit, so a later block would replay it on freed memory. Off, each
        # replay casts the weights it uses.
        with torch.cuda.device(device), torch.no_grad(), autocast_for_capture("cuda", self.conditions.autocast[1]):
            self.graph, self.logits = capture(self._call, warmup=max(1, warmup), pool=pool)
        self.static_cache.reset()  # warm-up moved the static state; bind() fills it anyway
        self.model = None  # the graph holds what it needs; no reference cycle through the model

    # ------------------------------------------------------------------ captured function
    def _call(self) -> torch.Tensor:
        # _decode_step counts tokens in a Python int; keep it constant so that a compiled step
        # is not specialised (and recompiled) on its value.
        self.static_cache.seen_tokens = 1
        return self._run()

    def _step(self) -> torch.Tensor:
        model = self.model
        embeds = model.model.embed_tokens(self.ids)[:, 0]
        h = model.model._decode_step(embeds, self.static_cache, False, self.policy).last_hidden_state
        return model.lm_head(h.to(model.lm_head.weight.dtype)).float()

    # ------------------------------------------------------------------ one token
    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, cache: MossNetCache) -> torch.Tensor:
        """input_ids: (batch, 1) on the model's device. Returns logits (batch, 1, vocab) fp32,
        a fresh tensor; ``cache`` is advanced by one token."""
        self.slot.bind(cache)
        self.ids.copy_(input_ids)
        self.graph.replay()
        cache.seen_tokens += 1
        return self.logits.clone()

    def matches(self) -> bool:
        """Still valid: same weight tensors and the same autocast state as at capture."""
        return self.conditions.hold()


def graph_decode_applicable(model, input_ids, inputs_embeds, attention_mask, position_ids, cache, labels,
                            output_hidden_states, output_router_stats, logits_to_keep,
                            policy: ExecutionPolicy | None = None) -> bool:
    """Whether ``MossNetForCausalLM.forward`` may take the captured path for this call
    (``policy``: the call's execution policy, None = the model's)."""
    policy = model.execution_policy if policy is None else policy
    return bool(
        policy.decode_graph
        and cache is not None
        and cache.seen_tokens > 0
        and input_ids is not None
        and inputs_embeds is None
        and input_ids.is_cuda
        and input_ids.dim() == 2
        and input_ids.shape[1] == 1
        and attention_mask is None
        and position_ids is None
        and labels is None
        and not output_hidden_states
        and not output_router_stats
        and logits_to_keep in (0, 1)
        and not model.training
        and not torch.is_grad_enabled()
        and not tracing()
        and not capturing()
        and cache.conv_states[0].is_cuda
    )


# Per model: {(batch size, autocast state, policy): CUDAGraphDecoder}. Kept outside the model so that
# ``copy.deepcopy`` / pickling of the model never meets a graph. Each decoder has its own memory
# pool: graphs of different batch sizes are replayed in any order, so they must not share one.
_REGISTRIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def graph_decoders(model) -> dict:
    """{(batch, autocast, policy): CUDAGraphDecoder} currently captured for ``model``."""
    return dict(_REGISTRIES.get(model, {}))


def graph_decode(model, input_ids: torch.Tensor, cache: MossNetCache, policy: ExecutionPolicy | None = None):
    """Logits of one token through the model's decoder for this batch size and policy (captured
    on first use)."""
    policy = model.execution_policy if policy is None else policy
    decoders = _REGISTRIES.get(model)
    if decoders is None:
        decoders = _REGISTRIES[model] = {}
    key = (input_ids.shape[0], _autocast_key(), policy)
    decoder = decoders.get(key)
    if decoder is None or not decoder.matches():
        if decoder is not None:  # weights moved: every graph of this model is stale
            decoders.clear()
        decoder = decoders[key] = CUDAGraphDecoder(
            model, input_ids.shape[0], compile=policy.decode_graph_compile, policy=policy
        )
    return decoder.decode(input_ids, cache)


def reset_graph_decoders(model) -> None:
    """Drop every captured decoder of ``model`` (frees their static caches and graph memory)."""
    _REGISTRIES.pop(model, None)
