"""Shared by the MoSSE layer tests: parameters that make every part of the layer matter."""

from __future__ import annotations

import torch


@torch.no_grad()
def randomize_mosse_(layer, a_log_max: float = 1.0):
    """O(1) activations; distinct per-expert A, dt, D, norms and biases; non-trivial routing
    (the default init gives near-uniform routers and hides routing bugs). In place; returns layer."""
    layer.in_proj.normal_(std=0.4)
    layer.out_proj.normal_(std=0.3)
    for bias in (layer.conv_bias, layer.shared_conv_bias):  # either may be absent (spec section 7 switches)
        if bias is not None:
            bias.normal_(std=0.2)
    if layer.bc_proj is not None:
        layer.bc_proj.normal_(std=0.4)
    layer.D.normal_()
    layer.norm_weight.normal_(mean=1.0, std=0.3)
    layer.dt_bias.normal_(mean=-1.0, std=0.5)
    layer.A_log.uniform_(-1.0, a_log_max)
    if layer.router is not None:
        layer.router.weight.normal_(std=0.5)
    return layer
