"""Mixture-of-experts plumbing: sort token->expert assignments into contiguous groups and run
one grouped matrix product per weight (spec section 3; also the MoSSE expert projections)."""

from .dispatch import ExpertDispatch, dispatch_by_expert
from .grouped_linear import grouped_linear, grouped_linear_reference

__all__ = ["ExpertDispatch", "dispatch_by_expert", "grouped_linear", "grouped_linear_reference"]
