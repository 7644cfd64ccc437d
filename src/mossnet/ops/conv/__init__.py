"""Depthwise causal conv1d run along each expert's own (routed) subsequence."""

from .routed_conv import routed_causal_conv, routed_causal_conv_reference

__all__ = ["routed_causal_conv", "routed_causal_conv_reference"]
