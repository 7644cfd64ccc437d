"""Depthwise causal conv1d run along each expert's own (routed) subsequence: on the dense
(batch, T, E, C) layout (``routed_causal_conv``) or on compact segments (``segment_causal_conv``)."""

from .routed_conv import routed_causal_conv, routed_causal_conv_reference
from .segment_conv import gather_rows, segment_causal_conv, segment_causal_conv_reference

__all__ = [
    "gather_rows",
    "routed_causal_conv",
    "routed_causal_conv_reference",
    "segment_causal_conv",
    "segment_causal_conv_reference",
]
