"""The depthwise causal conv of spec section 2.4, along compact segments (each expert's own
routed subsequence of one document), with carried windows; and the conv with the SiLU after it,
fused in Triton on CUDA (``conv_silu_triton.py``)."""

from .segment_conv import (
    conv_at_rows,
    gather_rows,
    group_sum,
    segment_causal_conv,
    segment_causal_conv_reference,
    segment_conv_silu,
)

__all__ = ["conv_at_rows", "gather_rows", "group_sum", "segment_causal_conv", "segment_causal_conv_reference",
           "segment_conv_silu"]
