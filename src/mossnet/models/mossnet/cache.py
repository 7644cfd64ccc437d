"""The recurrent cache used by generation: per layer, the conv windows and each expert's SSM state.

Its size depends on the batch and the config only, never on how many tokens were generated
(O(1) memory in the generated length). Tensors are preallocated and updated in place, so a
decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from ...layers.mosse_rules import conv_window_shape


class MossNetCache:
    """conv_states[l]: (batch, *conv_window_shape(config)), by default each expert's window
    (batch, E, K-1, P+2N), with ``ssm_conv_placement="shared"`` one window of u (batch, K-1,
    d_model) (see :func:`~mossnet.layers.mosse_rules.conv_window_shape`); ssm_states[l]: (batch, E,
    N, P); both fp32. ``seen_tokens`` counts the tokens the states have absorbed; a cache with
    ``seen_tokens == 0`` holds zeros (the model then starts its layers from zeros without
    reading it), so states written into a cache by hand go through :meth:`from_states`.

    Example:
        >>> from mossnet import MossNetConfig
        >>> cache = MossNetCache(MossNetConfig.from_preset("tiny"), batch_size=2)
        >>> tuple(cache.ssm_states[0].shape), cache.seen_tokens
        ((2, 4, 16, 32), 0)
    """

    is_compileable = False

    def __init__(self, config, batch_size: int, device=None, dtype: torch.dtype = torch.float32):
        E, P, N = config.ssm_experts, config.ssm_head_dim, config.ssm_state_dim
        shapes = [(batch_size, *conv_window_shape(config))] * config.n_layers + [(batch_size, E, N, P)] * config.n_layers
        # Separate tensors (each layer's state is written in place, and views of one buffer may
        # not be), zeroed together: one multi-tensor launch on CUDA instead of one fill per tensor.
        states = [torch.empty(shape, device=device, dtype=dtype) for shape in shapes]
        torch._foreach_zero_(states)
        self.conv_states, self.ssm_states = states[: config.n_layers], states[config.n_layers:]
        self.seen_tokens = 0

    @classmethod
    def from_states(cls, conv_states: list[torch.Tensor], ssm_states: list[torch.Tensor]) -> "MossNetCache":
        """A cache around existing per-layer state tensors (used as given, not copied), marked as
        continuing a sequence (``seen_tokens = 1``: only generation bookkeeping reads it)."""
        cache = cls.__new__(cls)
        cache.conv_states, cache.ssm_states = list(conv_states), list(ssm_states)
        cache.seen_tokens = 1
        return cache

    @property
    def batch_size(self) -> int:
        return self.ssm_states[0].shape[0]

    def nbytes(self) -> int:
        """Bytes held by the cache (constant during generation)."""
        return sum(t.numel() * t.element_size() for t in self.conv_states + self.ssm_states)

    def reset(self) -> None:
        torch._foreach_zero_(self.conv_states + self.ssm_states)
        self.seen_tokens = 0

    def reorder(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search / batch reordering), in place."""
        for t in self.conv_states + self.ssm_states:
            t.copy_(t.index_select(0, beam_idx.to(t.device)))

    # transformers' generation calls this name on caches during beam search.
    reorder_cache = reorder

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens
