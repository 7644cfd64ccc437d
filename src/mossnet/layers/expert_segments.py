"""The compact rows of a MoSSE forward, cut into segments: one per (expert, document).

The MoSSE works on dispatched rows (:func:`~mossnet.ops.moe.dispatch_by_expert`): one row per
(token, expert) pair that the expert processes, sorted by expert and, inside an expert, by
flat token index. Documents are numbered in token order over the whole batch (one per batch
row, or one per packed document), so the rows of expert e and document d are contiguous: a
segment. Its rows are exactly the sequence of expert e in document d, in time order -- what
expert e's conv and scan must see. Carried conv windows and SSM states enter per segment (the
first document of each row continues from the cache; later documents start from zeros) and
leave per segment (each row keeps its last document's).

Padding rows (expert id E, dropped by the dispatch) sort last. They are cut into trailing
segments of at most T rows, so that every segment is at most T rows long: a static bound that
a scan may pad to when it cannot read the boundaries back (``torch.compile``, ``torch.export``).
Their outputs are computed (fixed shapes) and never used.

Everything is computed on the device with fixed shapes: no host synchronisation.

A batch whose rows hold every (token, expert) pair, without padding or packed documents (as in
``state_update="all"`` training), has uniform segments: E * batch of exactly T rows, no padding
segments. ``uniform`` says so, and the conv and the scan then treat the rows as a plain batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..execution import tracing
from ..ops.moe import ExpertDispatch
from .sequence_layout import SequenceLayout


@dataclass
class ExpertSegments:
    """Segments of M dispatched rows.

    Attributes:
        segment: (M,) int64 segment of every row: ``e * n_documents + d`` for expert e and
            document d, ``E * n_documents + j`` for the j-th block of T padding rows.
        cu_seqlens: (S+1,) int32 boundaries of the S segments (many may be empty).
        expert_of_segment: (S,) the expert of each segment (E-1 for padding segments, whose
            outputs are discarded).
        max_length: a bound on every segment's length (T).
        n_experts, n_documents: E and the documents of the batch.
        first_document, last_document: (batch,) each row's first and last document.
        uniform: every segment is exactly ``max_length`` rows (see the module docstring).
    """

    segment: torch.Tensor
    cu_seqlens: torch.Tensor
    expert_of_segment: torch.Tensor
    max_length: int
    n_experts: int
    n_documents: int
    first_document: torch.Tensor
    last_document: torch.Tensor
    layout: SequenceLayout  # where the tables that every layer shares are kept
    uniform: bool = False

    @classmethod
    def build(cls, rows: ExpertDispatch, layout: SequenceLayout, n_experts: int,
              every_pair: bool = False) -> "ExpertSegments":
        """Segments of ``rows`` (dispatched tokens of ``layout``'s batch, sorted by expert).
        ``every_pair``: the rows hold every (token, expert) pair of the batch.

        What depends on the layout and the shapes alone (the uniform segmentation, the segment
        boundaries searched for, each segment's expert) is built once per forward and shared
        by the layers (:meth:`SequenceLayout.shared`); only what depends on the routing is built
        here per layer."""
        E, T = n_experts, max(layout.length, 1)
        device = rows.token.device
        M = rows.token.numel()
        n_docs = layout.n_documents
        first, last = layout.first_document(device), layout.last_document(device)
        if (every_pair and layout.valid is None and layout.cu_seqlens is None and layout.length > 0
                and M == E * layout.batch * layout.length):
            S = E * n_docs  # M == S * T: segment s = e * batch + b holds rows [s*T, (s+1)*T)
            segment, cu, expert_of_segment = layout.shared(("uniform segments", E, M, device), lambda: (
                torch.arange(M, device=device) // T,
                (torch.arange(S + 1, device=device) * T).to(torch.int32),
                torch.arange(S, device=device) // n_docs,
            ))
            return cls(segment, cu, expert_of_segment, T, E, n_docs, first, last, layout, uniform=True)
        doc = layout.document_of_token(device).index_select(0, rows.token)
        segment = rows.expert * n_docs + doc
        if not rows.every_row_routed:
            # Rows from offsets[-1] on are padding: the j-th block of T of them is one segment.
            row_index = layout.shared(("row index", M, device), lambda: torch.arange(M, device=device))
            pad_block = (row_index - rows.offsets[-1].long()).clamp(min=0) // T
            segment = torch.where(rows.expert < E, segment, E * n_docs + pad_block)
        S = E * n_docs + M // T  # the padding segments exist (empty) either way: one shape rule
        # The rows are sorted by expert, then by token, and documents are numbered in token order,
        # so ``segment`` never decreases along the rows (padding segments come last, in order):
        # segment s starts at the first row whose segment is >= s. One search, no counting pass.
        # ONNX has no searchsorted, so a trace counts each segment's rows instead (scatter_add_,
        # not bincount, which reads its maximum back to the host).
        if tracing():
            sizes = torch.zeros(S, dtype=torch.long, device=device).scatter_add_(0, segment, torch.ones_like(segment))
            cu = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)]).to(torch.int32)
        else:
            starts = layout.shared(("segment index", S + 1, device), lambda: torch.arange(S + 1, device=device))
            cu = torch.searchsorted(segment, starts, out_int32=True)
        expert_of_segment = layout.shared(("expert of segment", E, S, device),
                                          lambda: (torch.arange(S, device=device) // n_docs).clamp(max=E - 1))
        return cls(segment, cu, expert_of_segment, T, E, n_docs, first, last, layout)

    def _state_slots(self, which: str) -> torch.Tensor:
        """(batch, E) segment of (each row's ``which`` ("first" or "last") document, expert).
        One table per layout and expert count, not per carried state or layer: a layer carries
        several (conv windows, SSM states), every layer of a forward the same."""
        document = self.first_document if which == "first" else self.last_document
        if document is self.first_document:  # unpacked rows: one document each, first = last
            which = "first"

        def make():
            experts = torch.arange(self.n_experts, device=document.device)
            return experts[None, :] * self.n_documents + document[:, None]

        return self.layout.shared((f"{which} slots", self.n_experts, document.device), make)

    def scatter_states(self, state: torch.Tensor | None) -> torch.Tensor | None:
        """(batch, E, ...) carried states -> (S, ...): each row's state on its first document's
        segments, zeros elsewhere."""
        if state is None:
            return None
        batch, E = state.shape[:2]
        S = self.cu_seqlens.numel() - 1
        flat = state.reshape(batch * E, *state.shape[2:])
        return state.new_zeros(S, *state.shape[2:]).index_copy(0, self._state_slots("first").reshape(-1), flat)

    def gather_states(self, per_segment: torch.Tensor | None) -> torch.Tensor | None:
        """(S, ...) final states -> (batch, E, ...): each row's last document's."""
        if per_segment is None:
            return None
        return per_segment[self._state_slots("last")]
