"""How the tokens of one forward pass are laid out: padding and packed documents.

* ``attention_mask`` (batch, T): 0 marks padding. A padding token is routed to no expert in
  any router, enters no conv and no scan, and adds nothing to the losses (spec section 2.8).
* ``position_ids`` (batch, T) restarting at 0 mark packed documents (Hugging Face's packed
  batches). Each document starts from a zero SSM state and a zero conv window. The scan then
  runs on the flattened batch with ``cu_seqlens`` at every row and document start; building
  those boundaries reads them back to the host, so pass ``position_ids`` only when you pack.
  A restart at t = 0 is not a boundary (the row continues from the cache, if any).

One layout is built per forward and handed to every layer, so it is also where the index
tensors that depend on the layout alone (never on a layer's routing) are kept: the first layer
that asks builds them (:meth:`SequenceLayout.shared`), and the rest reuse them. A prefill of a
12-layer model otherwise rebuilt the same few tables in every layer, a dozen launches each time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch


@dataclass
class SequenceLayout:
    """valid: (batch, T) bool or None. doc_id: (batch, T) long or None (packed documents).
    cu_seqlens: (n_segments + 1,) int32 over the flattened batch, or None. first_segment,
    last_segment: (batch,) segment index of each row's first and last document."""

    batch: int
    length: int
    valid: torch.Tensor | None = None
    doc_id: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
    first_segment: torch.Tensor | None = None
    last_segment: torch.Tensor | None = None
    _shared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def shared(self, key: Hashable, make: Callable[[], object]) -> object:
        """``make()``, built once per layout (so once per forward) and reused by every layer
        that asks with the same ``key``. Only for values that depend on the layout and the
        key alone, and that no caller modifies in place (index tables)."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    @classmethod
    def build(cls, batch: int, length: int, attention_mask=None, position_ids=None) -> "SequenceLayout":
        valid = None if attention_mask is None else attention_mask.bool()
        if position_ids is None:
            return cls(batch, length, valid)
        if position_ids.shape != (batch, length):
            raise ValueError(f"position_ids must be (batch, T) = {(batch, length)}, got {tuple(position_ids.shape)}")
        restart = position_ids == 0
        restart[:, 0] = False
        doc_id = torch.cumsum(restart.long(), dim=1)
        starts = restart.clone()
        starts[:, 0] = True
        per_row = starts.sum(1)
        first = torch.cumsum(per_row, 0) - per_row
        last = first + per_row - 1
        begin = starts.flatten().nonzero().flatten()
        cu = torch.cat([begin, begin.new_tensor([batch * length])]).to(torch.int32)
        return cls(batch, length, valid, doc_id, cu, first, last)

    @property
    def n_documents(self) -> int:
        """Sequences over the whole batch: one per row, or one per packed document."""
        return self.batch if self.cu_seqlens is None else self.cu_seqlens.numel() - 1

    def document_of_token(self, device=None) -> torch.Tensor:
        """(batch*T,) the document of every flattened token, numbered over the whole batch
        (row by row, in order): each row's first document is ``first_document()[row]``."""
        n = self.batch * self.length
        if self.cu_seqlens is None:
            return self.shared(("document of token", device),
                               lambda: torch.arange(n, device=device) // max(self.length, 1))
        return self.shared("document of token", lambda: (self.first_segment[:, None] + self.doc_id).reshape(n))

    def first_document(self, device=None) -> torch.Tensor:
        """(batch,) each row's first document (it continues from a carried state)."""
        if self.cu_seqlens is None:
            return self._rows(device)
        return self.first_segment

    def last_document(self, device=None) -> torch.Tensor:
        """(batch,) each row's last document (its final state is the row's state)."""
        if self.cu_seqlens is None:
            return self._rows(device)
        return self.last_segment

    def _rows(self, device) -> torch.Tensor:
        return self.shared(("rows", device), lambda: torch.arange(self.batch, device=device))
