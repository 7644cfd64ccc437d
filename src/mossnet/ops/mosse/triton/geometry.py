"""How the token axis is cut into chunks: the host-side table and the in-kernel lookups.

Chunks never straddle a sequence. Sequence s owns global chunks ``[c0, c1)``; chunk g covers
tokens ``[ts, te)``, starting at the sequence's start plus a multiple of the chunk length L.

* Batched layout (no ``cu_seqlens``): every row has T tokens and NC = ceil(T / L) chunks, and
  both lookups are arithmetic (no table).
* Packed layout (``cu_seqlens``): the table is built on the device with a few tensor ops, never
  read back to the host (no synchronisation). The parallel kernels' grid is sized by the upper
  bound U = ceil(total / L) + n_seqs; the surplus programs see ``ts >= te`` and exit at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...segments import segment_ids


@triton.jit
def seq_bounds(s, cu_ptr, cuch_ptr, T, NC, IS_VARLEN: tl.constexpr):
    """Token range [t0, t1) and global chunk range [c0, c1) of sequence s."""
    if IS_VARLEN:
        t0 = tl.load(cu_ptr + s).to(tl.int64)
        t1 = tl.load(cu_ptr + s + 1).to(tl.int64)
        c0 = tl.load(cuch_ptr + s)
        c1 = tl.load(cuch_ptr + s + 1)
    else:
        t0 = tl.cast(s, tl.int64) * T
        t1 = t0 + T
        c0 = s * NC
        c1 = c0 + NC
    return t0, t1, c0, c1


@triton.jit
def chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Token range [ts, te) of global chunk g (empty for surplus programs)."""
    if IS_VARLEN:
        ts = tl.load(ts_ptr + g).to(tl.int64)
        te = tl.load(te_ptr + g).to(tl.int64)
    else:
        b = g // NC
        ts = tl.cast(b, tl.int64) * T + tl.cast(g % NC, tl.int64) * CHUNK
        te = tl.minimum(ts + CHUNK, (tl.cast(b, tl.int64) + 1) * T)
    return ts, te


class Geometry:
    """The chunking of a (batch, T) or packed (1, total) token axis, with chunk length L.

    Attributes:
        L, T, total: chunk length, tokens per row, tokens in all.
        varlen: packed layout. n_seqs: sequences (= states). NC: chunks per row (batched only).
        U: number of global chunk slots (exact when batched, an upper bound when packed).
        cu, cu_ch, ts, te: int32 tables on the device (packed), read only when ``varlen``;
            batched calls pass a one-element placeholder that the kernels never read.
    """

    def __init__(self, batch: int, T: int, cu_seqlens: torch.Tensor | None, L: int, device):
        self.L = L
        self.T = T
        self.total = batch * T
        if cu_seqlens is None:
            self.varlen = False
            self.n_seqs = batch
            self.NC = triton.cdiv(T, L)
            self.U = batch * self.NC
            unused = torch.empty(1, dtype=torch.int32, device=device)
            self.cu = self.cu_ch = self.ts = self.te = unused
        else:
            self.varlen = True
            self.n_seqs = cu_seqlens.numel() - 1
            self.NC = 0
            self._build_table(cu_seqlens.to(device=device, dtype=torch.int64), L, device)

    def _build_table(self, cu: torch.Tensor, L: int, device) -> None:
        nch = (cu[1:] - cu[:-1] + L - 1) // L  # (n_seqs,) chunks per sequence
        cu_ch = torch.nn.functional.pad(nch.cumsum(0), (1, 0))
        self.U = triton.cdiv(self.total, L) + self.n_seqs  # upper bound: no host sync
        gid = torch.arange(self.U, device=device)
        # The sequence of each program: searchsorted(cu_ch[1:], gid, right=True) clamped to the last
        # sequence, counted as a histogram + cumsum (Inductor in torch 2.11 cannot lower
        # searchsorted on a sliced boundary tensor, so torch.compile needs this form).
        seq = segment_ids(cu_ch, self.U)
        ts = cu[seq] + (gid - cu_ch[seq]) * L
        te = torch.minimum(ts + L, cu[seq + 1])  # te <= ts for surplus programs
        self.cu = cu.to(torch.int32)
        self.cu_ch = cu_ch.to(torch.int32)
        self.ts = ts.to(torch.int32)
        self.te = te.to(torch.int32)

    def per_sequence_grid(self, E: int, N: int, P: int):
        """Grid of the sequential state kernels: (sequence, expert, N-block x P-block)."""
        return lambda meta: (self.n_seqs, E, triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(P, meta["BLOCK_P"]))

    def per_chunk_grid(self, E: int, P: int | None = None):
        """Grid of the parallel kernels: (chunk, expert[, P-block]); no P axis when P is None."""
        if P is None:
            return lambda meta: (self.U, E)
        return lambda meta: (self.U, E, triton.cdiv(P, meta["BLOCK_P"]))
