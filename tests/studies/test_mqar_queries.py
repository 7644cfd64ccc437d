"""The MQAR loss reads the output layer at the queried positions only: the same logits, loss and
gradients as the full forward, for every architecture a study trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mossnet.studies.mqar import build_model, query_logits, query_positions
from mossnet.studies.mqar_data import IGNORE_INDEX, ZOOLOGY_TRAIN_MIXTURE, make_mqar_mixture
from mossnet.studies.specs import MQARRunSpec


def test_query_positions_list_each_rows_labels_in_order_then_zero():
    torch.manual_seed(0)
    labels = torch.full((40, 23), IGNORE_INDEX)
    for row in range(40):
        picked = torch.randperm(22)[: row % 7] + 1  # never position 0
        labels[row, picked] = torch.randint(0, 50, (len(picked),))
    got = query_positions(labels, 6)
    for row in range(40):
        want = (labels[row] != IGNORE_INDEX).nonzero()[:, 0].tolist()
        assert got[row].tolist() == want + [0] * (6 - len(want))


def test_a_batch_with_more_queries_than_the_slices_allow_is_refused(monkeypatch):
    from mossnet.studies import mqar

    spec = _spec("llama")
    x, y = mqar.checked_batch(spec, 0)  # Zoology's mixture: at most 64 queries a row
    assert int((y != IGNORE_INDEX).sum(1).max()) <= 64 == mqar.max_queries(spec)
    y[0] = IGNORE_INDEX
    y[0, 1:2 * 66:2] = 5
    monkeypatch.setattr(mqar, "training_batch", lambda spec, step: (x, y))
    with pytest.raises(ValueError, match="holds 66 queries, more than the 64"):
        mqar.checked_batch(spec, 0)


def _spec(arch: str, **model) -> MQARRunSpec:
    return MQARRunSpec(name=f"t/{arch}", result="unused", arch=arch, d_model=32, num_pairs=0, lr=1e-3, seed=0,
                       seq_len=0, vocab_size=256, steps=1, batch_size=1, n_layers=2, eval_examples=1,
                       mixture="zoology", model=model, device="cpu", dtype="fp32")


CASES = [("mossnet", {}), ("single_head", {}), ("llama", {}), ("mamba2", {}),
         ("attention", dict(heads=1, norm="layernorm", positions="learned", bias=True, dropout=0.0,
                            state_mixer="identity"))]


@pytest.mark.parametrize("arch, model", CASES, ids=[c[0] for c in CASES])
def test_query_logits_equal_the_full_forward(arch, model):
    spec = _spec(arch, **model)
    cfg, cls, _ = build_model(spec)
    torch.manual_seed(0)
    net = cls(cfg).eval()
    slices = tuple((T // 4, n // 4, m) for T, n, m in ZOOLOGY_TRAIN_MIXTURE)  # short rows, every slice
    x, y, _ = make_mqar_mixture(12, slices, seed=3, vocab_size=256)
    most = max(n for _, n, _ in slices)

    logits, picked_labels, aux = query_logits(net, x, y, most)
    full = net(input_ids=x)
    mask = y != IGNORE_INDEX
    got = logits[picked_labels != IGNORE_INDEX]
    torch.testing.assert_close(got, full.logits[mask].to(got.dtype), rtol=1e-5, atol=1e-5)
    assert torch.equal(picked_labels[picked_labels != IGNORE_INDEX], y[mask])
    want_aux = getattr(full, "aux_loss", None)
    assert (aux is None) == (want_aux is None) and (aux is None or torch.allclose(aux, want_aux))

    # the loss and every gradient, against cross-entropy over the full logits
    F.cross_entropy(logits.float().flatten(0, 1), picked_labels.flatten(), ignore_index=IGNORE_INDEX).backward()
    ours = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    full = net(input_ids=x).logits
    F.cross_entropy(full.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX).backward()
    for n, p in net.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
