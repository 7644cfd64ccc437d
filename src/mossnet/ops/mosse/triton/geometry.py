"""How the token axis is cut into chunks: the host-side table and the in-kernel lookups.

Chunks never straddle a sequence. Sequence s owns global chunks ``[c0, c1)``; chunk g covers
tokens ``[ts, te)``, starting at the sequence's start plus a multiple of the chunk length L.

* Batched layout (no ``cu_seqlens``): every row has T tokens and NC = ceil(T / L) chunks, and
  both lookups are arithmetic (no table).
* Packed layout (``cu_seqlens``): the table is built on the device, never read back to the host
  (no synchronisation): by :func:`chunk_table_kernel` in one launch, or, inside a trace or for
  very many sequences, by :func:`chunk_table_reference`'s tensor ops (about twenty launches, paid
  per layer and step). The parallel kernels' grid is sized by the upper bound
  U = ceil(total / L) + n_seqs; the surplus programs see ``ts >= te`` and exit at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mossnet.execution import tracing

from ...launch_grid import cdiv, next_power_of_2
from ...segments import segment_ids

MAX_TABLE_SEQS = 2048  # the kernel holds every sequence's bounds in one register tile
TABLE_BLOCK = 32  # chunk slots per program of the table kernel


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
            self.NC = cdiv(T, L)
            self.U = batch * self.NC
            unused = torch.empty(1, dtype=torch.int32, device=device)
            self.cu = self.cu_ch = self.ts = self.te = unused
        else:
            self.varlen = True
            self.n_seqs = cu_seqlens.numel() - 1
            self.NC = 0
            self._build_table(cu_seqlens.to(device=device, dtype=torch.int64), L, device)

    def _build_table(self, cu: torch.Tensor, L: int, device) -> None:
        self.U = cdiv(self.total, L) + self.n_seqs  # upper bound: no host sync
        if tracing() or self.n_seqs + 1 > MAX_TABLE_SEQS:
            self.cu, self.cu_ch, self.ts, self.te = chunk_table_reference(cu, L, self.U)
            return
        self.cu = torch.empty(self.n_seqs + 1, dtype=torch.int32, device=device)
        self.cu_ch = torch.empty_like(self.cu)
        self.ts = torch.empty(self.U, dtype=torch.int32, device=device)
        self.te = torch.empty_like(self.ts)
        chunk_table_kernel[(cdiv(self.U, TABLE_BLOCK),)](
            cu, self.cu, self.cu_ch, self.ts, self.te, self.n_seqs, self.U, L,
            BLOCK_S=next_power_of_2(self.n_seqs + 1), BLOCK_G=TABLE_BLOCK)

    def per_sequence_grid(self, E: int, N: int, P: int):
        """Grid of the sequential state kernels: (sequence, expert, N-block x P-block)."""
        return lambda meta: (self.n_seqs, E, cdiv(N, meta["BLOCK_N"]) * cdiv(P, meta["BLOCK_P"]))

    def per_chunk_grid(self, E: int, P: int | None = None):
        """Grid of the parallel kernels: (chunk, expert[, P-block]); no P axis when P is None."""
        if P is None:
            return lambda meta: (self.U, E)
        return lambda meta: (self.U, E, cdiv(P, meta["BLOCK_P"]))


def chunk_table_reference(cu: torch.Tensor, L: int, U: int):
    """The packed chunk table in tensor ops: the definition :func:`chunk_table_kernel` must equal.

    Args:
        cu: (S+1,) int64 sequence boundaries (empty sequences allowed); L: chunk length;
            U: chunk slots (at least the chunks of all sequences).
    Returns:
        int32 tensors: cu (S+1,); cu_ch (S+1,), the global chunk boundaries of the sequences;
        ts, te (U,), each slot's token range (``te <= ts`` past the last chunk).
    """
    nch = (cu[1:] - cu[:-1] + L - 1) // L  # (S,) chunks per sequence
    cu_ch = torch.nn.functional.pad(nch.cumsum(0), (1, 0))
    gid = torch.arange(U, device=cu.device)
    # The sequence of each slot: searchsorted(cu_ch[1:], gid, right=True) clamped to the last
    # sequence, counted as a histogram + cumsum (Inductor in torch 2.11 cannot lower
    # searchsorted on a sliced boundary tensor, so torch.compile needs this form).
    seq = segment_ids(cu_ch, U)
    ts = cu[seq] + (gid - cu_ch[seq]) * L
    te = torch.minimum(ts + L, cu[seq + 1])
    return cu.to(torch.int32), cu_ch.to(torch.int32), ts.to(torch.int32), te.to(torch.int32)


@triton.jit
def chunk_table_kernel(cu_ptr, cu32_ptr, cu_ch_ptr, ts_ptr, te_ptr, S, U, L,
                       BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr):
    """:func:`chunk_table_reference` for BLOCK_G slots per program. Every program rebuilds the
    chunk boundaries of all S sequences in registers (a cumsum over at most a few thousand
    values, cheaper than a second launch); the first also writes them out."""
    s = tl.arange(0, BLOCK_S)
    in_seq = s < S
    start = tl.load(cu_ptr + s, mask=in_seq, other=0).to(tl.int64)
    end = tl.load(cu_ptr + s + 1, mask=in_seq, other=0).to(tl.int64)
    n_chunks = tl.where(in_seq, (end - start + L - 1) // L, 0)
    chunk_end = tl.cumsum(n_chunks, axis=0)  # cu_ch[s + 1]
    if tl.program_id(0) == 0:
        tl.store(cu_ch_ptr + s + 1, chunk_end.to(tl.int32), mask=in_seq)
        tl.store(cu_ch_ptr + s, tl.zeros([BLOCK_S], dtype=tl.int32), mask=s == 0)
        tl.store(cu32_ptr + s, tl.load(cu_ptr + s, mask=s <= S, other=0).to(tl.int32), mask=s <= S)
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    # Each slot's sequence: how many sequences, the last excluded, end at or before it.
    ended = (chunk_end[None, :] <= g[:, None].to(tl.int64)) & (s[None, :] < S - 1)
    seq = tl.sum(ended.to(tl.int32), axis=1)
    first_chunk = tl.sum(tl.where(s[None, :] == seq[:, None], chunk_end - n_chunks, 0), axis=1)
    slot_ok = g < U
    seq_start = tl.load(cu_ptr + seq, mask=slot_ok, other=0).to(tl.int64)
    seq_end = tl.load(cu_ptr + seq + 1, mask=slot_ok, other=0).to(tl.int64)
    ts = seq_start + (g - first_chunk) * L
    te = tl.minimum(ts + L, seq_end)
    tl.store(ts_ptr + g, ts.to(tl.int32), mask=slot_ok)
    tl.store(te_ptr + g, te.to(tl.int32), mask=slot_ok)
