"""Chunkwise-parallel MoSSE scan (the SSD form of Mamba-2), in plain PyTorch.

Runs anywhere PyTorch runs and is the CPU fast path. The sequence is cut into chunks of
``chunk_size`` tokens. Inside a chunk every expert is a small decayed linear attention,
computed as matrix products; between chunks only the (N, P) state of each expert is carried,
by a short loop over chunks. Sequence lengths need not be multiples of the chunk size: the
tail is padded with dt = 0, which leaves the state untouched.

With a_t = dt_t * A and a cumulative sum cs inside each chunk:

    y_i = sum_{j<=i in chunk} (C_i . B_j) dt_j exp(cs_i - cs_j) x_j        (intra-chunk)
        + exp(cs_i) C_i^T S_chunk_start                                    (carried state)
        + D x_i
    S_next_chunk = exp(cs_last) S_chunk_start + sum_j exp(cs_last - cs_j) dt_j B_j x_j^T
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import compute_dtype_for


def mosse_scan_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as :func:`mosse_scan_reference` (batch layout, no cu_seqlens).

    Shapes: x (batch, T, E, P), dt (batch, T, E), A (E,), B/C (batch, T, E, N), D (E, P) or None,
    initial_state (batch, E, N, P) or None.

    Example:
        >>> x, B, C = torch.randn(1, 70, 2, 4), torch.randn(1, 70, 2, 3), torch.randn(1, 70, 2, 3)
        >>> y, _ = mosse_scan_chunked(x, torch.rand(1, 70, 2), -torch.rand(2), B, C, chunk_size=16)
        >>> y.shape
        torch.Size([1, 70, 2, 4])
    """
    batch, T, E, P = x.shape
    N = B.shape[-1]
    cdt = compute_dtype_for(x)
    if T == 0:  # an empty scan (e.g. a packed batch of empty sequences): the state passes through
        state = x.new_zeros(batch, E, N, P, dtype=cdt) if initial_state is None else initial_state.to(cdt)
        return x.new_zeros(batch, 0, E, P), (state if output_final_state else None)
    L = chunk_size
    pad = (-T) % L
    # Compute in fp32 (fp64 for fp64 inputs) whatever the input dtype: the spec keeps state
    # and accumulation in fp32.
    xs, Bs, Cs, dts = (t.to(cdt) for t in (x, B, C, dt))
    if pad:
        xs, Bs, Cs = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bs, Cs))
        dts = F.pad(dts, (0, 0, 0, pad))
    n_chunks = (T + pad) // L
    xs = xs.view(batch, n_chunks, L, E, P)
    Bs = Bs.view(batch, n_chunks, L, E, N)
    Cs = Cs.view(batch, n_chunks, L, E, N)
    dts = dts.view(batch, n_chunks, L, E)

    log_decay = dts * A.to(cdt)  # (batch, chunks, L, E), <= 0
    cum = torch.cumsum(log_decay, dim=2)

    # Intra-chunk: decayed causal attention. rel[i, j] = a_{j+1} + ... + a_i (= cs_i - cs_j),
    # summed directly as a masked cumsum ("segsum"): the difference cs_i - cs_j of two large
    # prefix sums cancels in fp32 when decays are strong (dt * A of -10 or less per token) and
    # cost dA up to 1e-3 relative error, past the 1e-4 contract. Masked above the diagonal
    # *before* exp so that no inf ever appears (keeps gradients finite).
    strictly_below = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)  # [r, j]: r > j
    terms = log_decay[:, :, :, None, :].masked_fill(~strictly_below[None, None, :, :, None], 0.0)
    rel = torch.cumsum(terms, dim=2)  # (batch, chunks, Li, Lj, E)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    rel = rel.masked_fill(~causal[None, None, :, :, None], float("-inf"))
    scores = torch.einsum("bcien,bcjen->bcije", Cs, Bs) * torch.exp(rel) * dts[:, :, None, :, :]
    y = torch.einsum("bcije,bcjep->bciep", scores, xs)

    # What each chunk adds to the state at its own end (rel's last row: cs_last - cs_j).
    weight_to_end = torch.exp(rel[:, :, -1]) * dts  # (batch, chunks, L, E)
    chunk_states = torch.einsum("bcje,bcjen,bcjep->bcenp", weight_to_end, Bs, xs)

    # Carry the state across chunks: a short sequential loop over chunks, not tokens.
    chunk_decay = torch.exp(cum[:, :, -1, :])  # (batch, chunks, E)
    state = xs.new_zeros(batch, E, N, P) if initial_state is None else initial_state.to(cdt)
    starts = []
    for c in range(n_chunks):
        starts.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    start_states = torch.stack(starts, dim=1)  # (batch, chunks, E, N, P)

    y = y + torch.einsum("bcien,bcenp->bciep", Cs, start_states) * torch.exp(cum)[..., None]
    y = y.reshape(batch, n_chunks * L, E, P)[:, :T]
    if D is not None:
        y = y + D.to(cdt) * x.to(cdt)
    return y.to(x.dtype), (state if output_final_state else None)
