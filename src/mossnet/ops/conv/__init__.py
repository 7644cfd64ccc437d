"""The depthwise causal conv of spec section 2.4, along compact segments (each expert's own
routed subsequence of one document), with carried windows."""

from .segment_conv import causal_conv_window, gather_rows, segment_causal_conv, segment_causal_conv_reference

__all__ = ["causal_conv_window", "gather_rows", "segment_causal_conv", "segment_causal_conv_reference"]
