"""Kernel-level ops. ``mosse_scan`` / ``mosse_step`` are the names fixed by spec section 5."""

from .mosse import mosse_scan, mosse_step, register_fast_path, resolve_impl

__all__ = ["mosse_scan", "mosse_step", "register_fast_path", "resolve_impl"]
