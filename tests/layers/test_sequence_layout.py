"""The layout of one forward (``layers/sequence_layout.py``): the index tables that depend on
it alone are built once per forward and shared by the layers, and sharing them changes nothing."""

from __future__ import annotations

import collections

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.layers.sequence_layout import SequenceLayout


def test_shared_builds_once_per_key():
    layout = SequenceLayout.build(2, 5)
    calls = []
    first = layout.shared("k", lambda: calls.append(1) or torch.arange(3))
    again = layout.shared("k", lambda: calls.append(1) or torch.arange(3))
    assert first is again and len(calls) == 1
    assert SequenceLayout.build(2, 5).shared("k", lambda: torch.zeros(1)).shape == (1,)  # per layout


@pytest.mark.parametrize("state_update,packed", [("routed", False), ("routed", True), ("all", False)])
def test_every_layer_of_a_forward_reuses_the_layout_tables(monkeypatch, state_update, packed):
    """Each table is built once for a 3-layer forward (padding, packed documents and "all"
    included), not once per layer."""
    built = collections.Counter()
    real = SequenceLayout.shared

    def counting(self, key, make):
        return real(self, key, lambda: built.update([key]) or make())

    monkeypatch.setattr(SequenceLayout, "shared", counting)
    torch.manual_seed(0)
    model = MossNetForCausalLM(MossNetConfig.from_preset("tiny", n_layers=3, state_update=state_update)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0  # left padding in one row
    position_ids = torch.tensor([list(range(6)) + list(range(5)), list(range(11))]) if packed else None
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=not packed)
    assert built, "no layer asked the layout for a shared table"
    assert max(built.values()) == 1, f"tables rebuilt per layer: {built}"
    names = {k[0] if isinstance(k, tuple) else k for k in built}
    want = {"document of token", "segment index", "expert of segment", "row index"}
    if state_update == "all":
        want.add("every pair")
    if not packed:
        # the cache's states leave through the slots of each row's last document, which for
        # unpacked rows are those of its first: one table serves both
        want.add("first slots")
        assert "last slots" not in names
    assert want <= names, f"not shared: {want - names}"


def test_a_layer_called_alone_equals_one_sharing_a_layout_with_another():
    """The same layout object handed to two layers (as the model does) gives each the output it
    gets with a layout of its own."""
    torch.manual_seed(0)
    model = MossNetForCausalLM(MossNetConfig.from_preset("tiny", n_layers=2)).eval()  # initialised layers
    a, b = (block.mixer for block in model.model.layers)
    u = torch.randn(2, 9, model.config.d_model)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False
    shared = SequenceLayout.build(2, 9, mask)
    with torch.no_grad():
        together = [a(u, shared)[0], b(u, shared)[0]]
        alone = [a(u, SequenceLayout.build(2, 9, mask))[0], b(u, SequenceLayout.build(2, 9, mask))[0]]
    for x, y in zip(together, alone):
        assert torch.isfinite(x[mask]).all()
        torch.testing.assert_close(x[mask], y[mask], rtol=0, atol=0)  # padding outputs are never read
