"""One way to call the ops' ``torch.autograd.Function``\\ s: :func:`apply_function`.

``Function.apply`` costs about 20 µs of host time per call even when no gradient can flow (it
builds autograd's context and graph node anyway). A layer calls about a dozen such functions, and
batch-1 prefill and decode are bound by the host, so inference calls the function's ``forward``
directly, with a context that keeps nothing.

What must stay true for every function called through here: its ``forward`` uses its ``ctx``
only to save tensors and plain attributes for its ``backward`` (``save_for_backward``,
``mark_non_differentiable``, attribute writes), never to change its outputs, so skipping
autograd cannot change what it returns.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from ..execution import tracing


class _NoGradContext:
    """Stands in for autograd's ``ctx`` where no backward will run: every save is dropped."""

    def save_for_backward(self, *tensors) -> None:
        pass

    def mark_non_differentiable(self, *tensors) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def needs_autograd(args) -> bool:
    """Whether a gradient can flow from any tensor in ``args`` (grad mode on, and one requires
    grad), or the call is being traced (torch.compile and torch.export see the Function), or
    forward-mode AD or a ``torch.func`` transform is active: the bare forward of a Triton kernel
    would drop their tangents silently, where ``apply`` says it has no rule for them."""
    if tracing() or forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        return True
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def apply_function(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)``, or ``fn.forward`` without autograd's bookkeeping when no gradient
    can flow (:func:`needs_autograd`). The outputs are the same tensors either way."""
    if needs_autograd(args):
        return fn.apply(*args)
    return fn.forward(_NoGradContext(), *args)
