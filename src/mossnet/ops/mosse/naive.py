"""The ground truth for the MoSSE scan: a plain loop over time (spec section 5, ``reference``).

Every faster execution (``chunked``, the Triton kernels) is tested against this file. It is
written to be read, not to be fast: one token at a time, exactly the recurrence of spec
section 2.6.

    S_t = exp(dt_t * A) S_{t-1} + dt_t * B_t x_t^T          S_t: (N, P) per expert
    y_t = S_t^T C_t + D * x_t
"""

from __future__ import annotations

import torch


def compute_dtype_for(x: torch.Tensor) -> torch.dtype:
    """State and accumulation dtype: fp32, or fp64 when the inputs are fp64 (used by the
    float64 identity tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ssm_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence for every (row, expert) pair; no validation.

    Args:
        state: (batch, E, N, P) in the compute dtype.
        x: (batch, E, P); dt: (batch, E); B, C: (batch, E, N).
        A: (E,) or (batch, E)  -- per-row A lets a routed decode step pass only the chosen experts.
        D: (E, P), (batch, E, P) or None.
    Returns:
        y: (batch, E, P) and the new state (batch, E, N, P), both in the state's dtype.

    A step with dt == 0 leaves the state exactly unchanged (exp(0) = 1, the update is 0).
    """
    cdt = state.dtype
    x, dt, B, C = x.to(cdt), dt.to(cdt), B.to(cdt), C.to(cdt)
    decay = torch.exp(dt * A.to(cdt))  # (batch, E)
    update = (dt[..., None] * B)[..., :, None] * x[..., None, :]  # (batch, E, N, P)
    new_state = decay[..., None, None] * state + update
    y = torch.einsum("ben,benp->bep", C, new_state)
    if D is not None:
        y = y + D.to(cdt) * x
    return y, new_state


def mosse_scan_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sequential scan over a (batch, T) layout.

    Args:
        x: (batch, T, E, P); dt: (batch, T, E); A: (E,); B, C: (batch, T, E, N); D: (E, P) or None.
        initial_state: (batch, E, N, P) or None (zeros).
    Returns:
        y: (batch, T, E, P) in x's dtype, and the final state (batch, E, N, P) in the compute
        dtype if ``output_final_state`` else None.

    Example:
        >>> b, T, E, N, P = 2, 5, 3, 4, 8
        >>> x, B, C = torch.randn(b, T, E, P), torch.randn(b, T, E, N), torch.randn(b, T, E, N)
        >>> dt, A = torch.rand(b, T, E), -torch.rand(E)
        >>> y, s = mosse_scan_reference(x, dt, A, B, C, output_final_state=True)
        >>> y.shape, s.shape
        (torch.Size([2, 5, 3, 8]), torch.Size([2, 3, 4, 8]))
    """
    batch, T, E, P = x.shape
    N = B.shape[-1]
    cdt = compute_dtype_for(x)
    if initial_state is None:
        state = x.new_zeros(batch, E, N, P, dtype=cdt)
    else:
        state = initial_state.to(cdt)
    ys = []
    for t in range(T):
        y_t, state = ssm_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(batch, 0, E, P, dtype=cdt)
    return y.to(x.dtype), (state if output_final_state else None)


def mosse_scan_reference_varlen(
    x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, cu_seqlens=None
):
    """The packed form, done the obvious way: slice each sequence out and scan it alone.

    x etc. have batch 1; sequence i is ``[cu_seqlens[i], cu_seqlens[i+1])`` and starts from
    ``initial_state[i]``. Returns y (1, T, E, P) and the final states (n_seqs, E, N, P).
    """
    bounds = cu_seqlens.tolist()
    ys, finals = [], []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        init = None if initial_state is None else initial_state[i : i + 1]
        y_i, s_i = mosse_scan_reference(
            x[:, lo:hi], dt[:, lo:hi], A, B[:, lo:hi], C[:, lo:hi], D, init, output_final_state=True
        )
        ys.append(y_i)
        finals.append(s_i)
    y = torch.cat(ys, dim=1)
    return y, (torch.cat(finals, dim=0) if output_final_state else None)
