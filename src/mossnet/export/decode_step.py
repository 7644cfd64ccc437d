"""Functional wrappers around a :class:`~mossnet.MossNetForCausalLM` for export.

The eager model keeps its recurrent state in a :class:`~mossnet.models.mossnet.cache.MossNetCache`
that the decode step updates in place. Exported programs want explicit inputs and outputs
instead, so these wrappers take the per-layer states as tensors and return new ones:

    DecodeStep(model)(input_ids, *conv_states, *ssm_states) -> (logits, *conv_states', *ssm_states')
    Prefill(model)(input_ids) -> (logits_last, *conv_states, *ssm_states)

Both run the model's own code (the one-token decode step, ``MossNetModel._decode_step``, and the
chunked-scan forward), so the exported graph computes exactly what eager generation computes.
Shapes, per layer l: conv_states[l] (batch, E, K-1, P+2N) by default (the spec section 7 switches
change it: ``mossnet.layers.mosse_rules.conv_window_shape``) and ssm_states[l] (batch, E, N, P), fp32.
``initial_states`` and the ONNX manifest take them from the model's own cache, so every switch
exports with its own layout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.mossnet.cache import MossNetCache


def state_names(n_layers: int) -> list[str]:
    """Names of the state tensors, in argument order: conv_state_0.., ssm_state_0.."""
    return [f"conv_state_{i}" for i in range(n_layers)] + [f"ssm_state_{i}" for i in range(n_layers)]


def initial_states(config, batch_size: int = 1, device=None) -> list[torch.Tensor]:
    """Zero states in argument order (what a fresh sequence starts from)."""
    cache = MossNetCache(config, batch_size, device=device)
    return list(cache.conv_states) + list(cache.ssm_states)


class _StateFunction(nn.Module):
    """Base of the export wrappers: holds the model and copies the explicit state arguments."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layers = model.config.n_layers

    def _copied_states(self, states: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(conv states, ssm states) as fresh copies, so the caller's inputs are never modified."""
        L = self.n_layers
        if len(states) != 2 * L:
            raise ValueError(
                f"{type(self).__name__}: expected {2 * L} state tensors (conv then ssm per layer), got {len(states)}"
            )
        return [s.clone() for s in states[:L]], [s.clone() for s in states[L:]]


class DecodeStep(_StateFunction):
    """One generated token as a pure function of the recurrent state.

    forward(input_ids (batch, 1) int64, conv_state_0, ..., conv_state_{L-1}, ssm_state_0, ...,
    ssm_state_{L-1}) -> (logits (batch, V) fp32, new conv states..., new ssm states...).
    The inputs are not modified (the step works on copies).
    """

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor):
        cache = MossNetCache.from_states(*self._copied_states(states))
        backbone = self.model.model
        embeds = backbone.embed_tokens(input_ids[:, 0])
        h = backbone._decode_step(embeds, cache, False, traceable_policy(self.model)).last_hidden_state[:, 0]
        logits = self.model.lm_head(h.to(self.model.lm_head.weight.dtype)).float()
        return (logits, *cache.conv_states, *cache.ssm_states)


def traceable_policy(model):
    """The model's execution policy with the expert matmuls in their traceable all-experts form
    (``grouped_linear(impl="all_experts")``): the CPU default reads group sizes to the host,
    which ``torch.export`` cannot trace; this costs E/k times the expert FLOPs."""
    return model.execution_policy.replace(expert_matmul="all_experts")


class Prefill(_StateFunction):
    """A block of prompt tokens continued from given states (chunked prefill):
    forward(input_ids (batch, T), conv states..., ssm states...) -> (logits at the last
    position (batch, V), new conv states..., new ssm states...). Zero states start a prompt;
    a long prompt is several calls. Inputs are not modified. No padding (every token valid)."""

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor):
        cache = MossNetCache.from_states(*self._copied_states(states))
        # Embeddings are looked up here: the model's token-id range check reads values back to
        # the host, which a traced graph cannot do (out-of-range ids fail in the runtime's Gather).
        embeds = self.model.model.embed_tokens(input_ids)
        out = self.model(inputs_embeds=embeds, cache=cache, use_cache=True, logits_to_keep=1,
                         execution_policy=traceable_policy(self.model))
        return (out.logits[:, -1], *cache.conv_states, *cache.ssm_states)


def _example_ids(model, batch: int, T: int) -> torch.Tensor:
    device = model.lm_head.weight.device
    return torch.randint(0, model.config.vocab_size, (batch, T), device=device)


def export_decode_step(model, batch_size: int = 1, strict: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` the decode step at a fixed batch size (ExecuTorch's input)."""
    wrapper = DecodeStep(model).eval()
    args = (_example_ids(model, batch_size, 1), *initial_states(model.config, batch_size, model.lm_head.weight.device))
    with torch.no_grad():
        return torch.export.export(wrapper, args, strict=strict)


def export_prefill(model, length: int = 128, batch_size: int = 1, strict: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` :class:`Prefill` for blocks of ``length`` tokens (a static shape: the
    chunked scan unrolls its loop over chunks, so the block length is fixed at export time).
    A runner prefills a prompt in blocks and feeds the remainder through the decode step.

    The grouped expert products run in the traceable all-experts form (:func:`traceable_policy`):
    E/k times the expert FLOPs of the eager CPU path."""
    wrapper = Prefill(model).eval()
    args = (_example_ids(model, batch_size, length), *initial_states(model.config, batch_size, model.lm_head.weight.device))
    with torch.no_grad():
        return torch.export.export(wrapper, args, strict=strict)
