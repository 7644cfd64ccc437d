"""The public MoSSE ops: ``mosse_scan`` and ``mosse_step`` (spec section 5).

This file checks inputs, picks an execution and handles packed (``cu_seqlens``) batches.
The executions themselves live beside it:

* ``reference`` -- :mod:`.naive`, a loop over time (ground truth);
* ``chunked``   -- :mod:`.chunked`, chunkwise-parallel SSD in plain PyTorch (CPU default);
* GPU fast paths registered with :func:`register_fast_path` (``triton``), chosen by
  ``impl="auto"`` on CUDA; if none is usable we warn once and fall back to ``chunked``.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..segments import segment_positions
from .chunked import mosse_scan_chunked
from .naive import compute_dtype_for, mosse_scan_reference, mosse_scan_reference_varlen, ssm_step


@dataclass
class FastPath:
    """A GPU execution of the scan. ``fn`` has the signature of :func:`mosse_scan` minus ``impl``
    and must handle ``cu_seqlens`` itself; ``why_unavailable`` returns None when usable;
    ``accepts``: the keyword options (``fast_path_options``) that ``fn`` takes."""

    fn: Callable
    why_unavailable: Callable[[torch.Tensor], str | None]
    accepts: frozenset = frozenset()


_FAST_PATHS: dict[str, FastPath] = {}
_warned: set[str] = set()
DEFAULT_CHUNK_SIZE = 64


def register_fast_path(name: str, fn: Callable, why_unavailable: Callable[[torch.Tensor], str | None]):
    """Make ``impl=name`` available and let ``impl="auto"`` pick it on CUDA tensors."""
    params = inspect.signature(fn).parameters
    _FAST_PATHS[name] = FastPath(fn, why_unavailable, frozenset(params))


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """Which execution ``impl`` means for tensors like ``x`` (used by ``mossnet info`` too)."""
    known = {"auto", "reference", "chunked", *_FAST_PATHS}
    if impl not in known:
        raise ValueError(f"mosse_scan: unknown impl {impl!r}; expected one of {sorted(known)}")
    if impl != "auto":
        if impl in _FAST_PATHS:
            why = _FAST_PATHS[impl].why_unavailable(x)
            if why is not None:
                raise RuntimeError(f"mosse_scan: impl={impl!r} is unavailable here: {why}")
        return impl
    if x.device.type != "cuda":
        return "chunked"
    reasons = []
    for name, path in _FAST_PATHS.items():
        why = path.why_unavailable(x)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    _warn_once(
        "mossnet: no GPU fast path for the MoSSE scan ("
        + ("; ".join(reasons) or "none installed")
        + "); falling back to the plain PyTorch 'chunked' scan, which is several times slower."
    )
    return "chunked"


def _check_shapes(x, dt, A, B, C, D, initial_state, cu_seqlens):
    """Raise a ValueError/TypeError naming the first problem; never broadcast silently."""
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "initial_state": initial_state}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"mosse_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"mosse_scan: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"mosse_scan: {name} is on {t.device} but x is on {x.device}")
    if x.dim() != 4:
        raise ValueError(f"mosse_scan: x must be (batch, T, E, P), got shape {tuple(x.shape)}")
    batch, T, E, P = x.shape
    if B.dim() != 4 or B.shape[:3] != (batch, T, E):
        raise ValueError(f"mosse_scan: B must be (batch, T, E, N) = ({batch}, {T}, {E}, N), got {tuple(B.shape)}")
    N = B.shape[3]
    if C.shape != B.shape:
        raise ValueError(f"mosse_scan: C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    if dt.shape != (batch, T, E):
        raise ValueError(f"mosse_scan: dt must be (batch, T, E) = {(batch, T, E)}, got {tuple(dt.shape)}")
    if A.shape != (E,):
        raise ValueError(f"mosse_scan: A must be (E,) = ({E},), got {tuple(A.shape)}")
    if D is not None and D.shape != (E, P):
        raise ValueError(f"mosse_scan: D must be (E, P) = {(E, P)}, got {tuple(D.shape)}")
    n_states = batch
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError("mosse_scan: cu_seqlens must be an int32 (or int64) tensor")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"mosse_scan: cu_seqlens must be 1-D with n_seqs + 1 >= 2 entries, got {tuple(cu_seqlens.shape)}")
        if batch != 1:
            raise ValueError(f"mosse_scan: with cu_seqlens the batch must be 1 (a packed batch), got batch={batch}")
        if cu_seqlens.device != x.device:
            raise ValueError(f"mosse_scan: cu_seqlens is on {cu_seqlens.device} but x is on {x.device}")
        n_states = cu_seqlens.numel() - 1
    if initial_state is not None and initial_state.shape != (n_states, E, N, P):
        what = "(n_seqs, E, N, P)" if cu_seqlens is not None else "(batch, E, N, P)"
        raise ValueError(
            f"mosse_scan: initial_state must be {what} = {(n_states, E, N, P)}, got {tuple(initial_state.shape)}"
        )


def _check_cu_seqlens_values(cu_seqlens: torch.Tensor, T: int) -> list[int]:
    """The boundaries as a host list, after checking them. Reads values back to the host: only
    the plain PyTorch paths outside a trace do this, and they need the lengths anyway."""
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != T or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
        raise ValueError(f"mosse_scan: cu_seqlens must start at 0, be non-decreasing and end at T={T}, got {bounds}")
    return bounds


def unpack_varlen(t: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(1, total, ...) packed -> (n_seqs, max_len, ...) padded with zeros. Sequences longer
    than ``max_len`` are cut (callers pass a true bound)."""
    starts, lens = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    pos = torch.arange(max_len, device=t.device)
    valid = pos[None, :] < lens[:, None]  # (n_seqs, max_len)
    index = (starts[:, None] + pos[None, :]).clamp(max=max(t.shape[1] - 1, 0))
    out = t[0][index]  # (n_seqs, max_len, ...)
    return out * valid.view(*valid.shape, *([1] * (out.dim() - 2))).to(out.dtype)


def pack_varlen(t: torch.Tensor, cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(n_seqs, max_len, ...) padded -> (1, total, ...) packed; inverse of :func:`unpack_varlen`."""
    seq_of_token, pos_in_seq = segment_positions(cu_seqlens, total)
    return t[seq_of_token, pos_in_seq][None]


def _chunked_varlen(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, chunk_size, max_seqlen=None):
    """The chunked scan of a packed batch: each sequence padded to a common length.

    With ``max_seqlen`` (a bound on every sequence's length, e.g. under ``torch.export``) no
    value is read back and every sequence is padded to it. Without it the boundaries are read
    to the host and only the non-empty sequences are scanned, padded to the longest one; an
    empty sequence's final state is its initial state.
    """
    total = x.shape[1]
    if max_seqlen is not None:
        padded = [unpack_varlen(t, cu_seqlens, max_seqlen) for t in (x, dt, B, C)]
        # Padding positions carry dt = 0, so each final state is the state at its sequence's end.
        y, final = mosse_scan_chunked(*padded[:2], A, *padded[2:], D, initial_state, output_final_state, chunk_size)
        return pack_varlen(y, cu_seqlens, total), final
    bounds = _check_cu_seqlens_values(cu_seqlens, total)
    lengths = [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])]
    kept = [i for i, n in enumerate(lengths) if n > 0]
    if len(kept) == len(lengths) or not kept:
        return _chunked_varlen(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, chunk_size,
                               max(lengths, default=0))
    keep = torch.tensor(kept, device=x.device)
    sub_cu = torch.tensor([0, *itertools.accumulate(lengths[i] for i in kept)], device=x.device, dtype=torch.int64)
    sub_init = None if initial_state is None else initial_state.index_select(0, keep)
    y, sub_final = _chunked_varlen(x, dt, A, B, C, D, sub_init, output_final_state, sub_cu, chunk_size,
                                   max(lengths))
    if not output_final_state:
        return y, None
    E, N, P = sub_final.shape[1:]
    final = sub_final.new_zeros(len(lengths), E, N, P) if initial_state is None else initial_state.to(sub_final.dtype)
    return y, final.index_copy(0, keep, sub_final)


def mosse_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_seqlen: int | None = None,
    fast_path_options: dict | None = None,
):
    """The MoSSE scan: E independent selective SSMs ("heads"), one per expert.

    Args:
        x: (batch, T, E, P) values after the conv.
        dt: (batch, T, E) step sizes, already softplus-ed and routing-masked (0 = skip).
        A: (E,) negative decay rates. B, C: (batch, T, E, N). D: (E, P) or None.
        initial_state: (batch, E, N, P), or (n_seqs, E, N, P) with cu_seqlens; None = zeros.
        output_final_state: also return the final state(s).
        cu_seqlens: int32 (n_seqs + 1,) boundaries of a packed batch (batch must be 1).
        impl: "auto" | "reference" | "chunked" | a registered fast path (e.g. "triton").
        chunk_size: chunk length of the "chunked" execution.
        max_seqlen: with cu_seqlens, a bound on every sequence's length (FlashAttention's
            convention). The plain PyTorch executions then read no value back to the host,
            which ``torch.export`` and ``torch.compile`` need; the cost is padding every
            sequence to this length.
        fast_path_options: keyword settings for the fast path (e.g. an execution policy's
            Triton options); each is passed only if the fast path's function takes it.
    Returns:
        ``(y, final_state)``: y (batch, T, E, P) in x's dtype; final_state (batch or n_seqs,
        E, N, P) in fp32 if asked, else None.

    Example:
        >>> b, T, E, N, P = 2, 7, 4, 8, 16
        >>> x = torch.randn(b, T, E, P); B = torch.randn(b, T, E, N); C = torch.randn(b, T, E, N)
        >>> dt = torch.rand(b, T, E); A = -torch.rand(E)
        >>> y, s = mosse_scan(x, dt, A, B, C, output_final_state=True)
        >>> tuple(y.shape), tuple(s.shape)
        ((2, 7, 4, 16), (2, 4, 8, 16))
    """
    _check_shapes(x, dt, A, B, C, D, initial_state, cu_seqlens)
    which = resolve_impl(impl, x)
    if which in _FAST_PATHS:
        path = _FAST_PATHS[which]
        options = {k: v for k, v in (fast_path_options or {}).items() if k in path.accepts}
        return path.fn(
            x, dt, A, B, C, D=D, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens, **options,
        )
    if cu_seqlens is not None:
        if which == "reference":
            _check_cu_seqlens_values(cu_seqlens, x.shape[1])
            return mosse_scan_reference_varlen(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens)
        return _chunked_varlen(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, chunk_size,
                               max_seqlen)
    if which == "reference":
        return mosse_scan_reference(x, dt, A, B, C, D, initial_state, output_final_state)
    return mosse_scan_chunked(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)


def mosse_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the scan: T calls equal one :func:`mosse_scan`.

    Args:
        state: (batch, E, N, P) fp32. x: (batch, E, P). dt: (batch, E). A: (E,).
        B, C: (batch, E, N). D: (E, P) or None.
    Returns:
        y (batch, E, P) in x's dtype and the new state (batch, E, N, P) in the state's dtype.
        Experts with dt = 0 keep their state exactly.
    """
    if state.dim() != 4:
        raise ValueError(f"mosse_step: state must be (batch, E, N, P), got {tuple(state.shape)}")
    batch, E, N, P = state.shape
    _check_shapes(x[:, None], dt[:, None], A, B[:, None], C[:, None], D, None, None)
    if x.shape != (batch, E, P) or B.shape != (batch, E, N):
        raise ValueError(
            f"mosse_step: x {tuple(x.shape)} and B {tuple(B.shape)} do not match state (batch, E, N, P) = {tuple(state.shape)}"
        )
    if state.device != x.device:
        raise ValueError(f"mosse_step: state is on {state.device} but x is on {x.device}")
    y, new_state = ssm_step(state.to(compute_dtype_for(x)), x, dt, A, B, C, D)
    return y.to(x.dtype), new_state.to(state.dtype)
