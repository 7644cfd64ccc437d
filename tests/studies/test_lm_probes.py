"""The decomposition study's probes: each fast function against its loop reference, and the
probe run on a real (tiny) MossNet."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mossnet.studies.lm_probes import (load_entropy, repeated_bigram_mask,
                                       repeated_bigram_mask_reference, router_adjacency, router_adjacency_reference,
                                       run_probes)


@pytest.mark.parametrize("vocab,T", [(3, 40), (50, 64), (1000, 16)])
def test_recall_token_split_matches_the_loop(vocab, T):
    torch.manual_seed(vocab)
    x = torch.randint(0, vocab, (5, T))
    assert torch.equal(repeated_bigram_mask(x), repeated_bigram_mask_reference(x))


def test_recall_tokens_by_hand():
    x = torch.tensor([[5, 6, 7, 5, 6, 6, 5, 6]])
    # bigrams ending at t=1..7: 56 67 75 56* 66 65 56*  (* seen before)
    assert repeated_bigram_mask(x).tolist() == [[False, False, False, False, True, False, False, True]]


@pytest.mark.parametrize("E,k", [(4, 2), (2, 2), (8, 1)])
def test_router_adjacency_matches_the_loop(E, k):
    torch.manual_seed(E * 10 + k)
    logits = torch.randn(3 * 17, E)
    logits[5] = logits[4]  # a tie-free repeat: same experts at adjacent positions
    fast = router_adjacency(logits, 3, 17, k)
    ref = router_adjacency_reference(logits, 3, 17, k)
    assert fast[0] == ref[0] and math.isclose(fast[1], ref[1], rel_tol=1e-9) and fast[2] == ref[2] == 3 * 16


def test_load_entropy():
    assert load_entropy(torch.tensor([5, 5, 5, 5])) == pytest.approx(1.0)
    assert load_entropy(torch.tensor([9, 0, 0, 0])) == 0.0
    assert 0 < load_entropy(torch.tensor([6, 2, 1, 1])) < 1


def test_probes_on_a_tiny_mossnet():
    """The recall/other split partitions the window loss exactly; router numbers are fractions;
    one expert has no router."""
    from mossnet import MossNetConfig, MossNetForCausalLM

    torch.manual_seed(0)
    cfg = MossNetConfig(vocab_size=40, d_model=16, n_layers=2, ssm_experts=4, ssm_top_k=2, ssm_head_dim=4,
                        ssm_state_dim=4, mlp_experts=1, mlp_top_k=1, mlp_hidden_dim=16)
    model = MossNetForCausalLM(cfg).eval()
    tokens = np.random.default_rng(0).integers(0, 8, 600)  # a small vocabulary: many repeated bigrams
    out = run_probes(model, tokens, seq_len=32, probe_tokens=256, device="cpu", autocast=contextlib.nullcontext)
    assert out["windows"] == 8 and 0 < out["recall_fraction"] < 1
    x = torch.from_numpy(tokens[:256].astype(np.int64)).view(8, 32)
    with torch.no_grad():
        logits = model(input_ids=x).logits
    mean = float(F.cross_entropy(logits[:, :-1].reshape(-1, 40), x[:, 1:].reshape(-1)))
    f = out["recall_fraction"]
    assert f * out["loss_recall"] + (1 - f) * out["loss_other"] == pytest.approx(mean, rel=1e-5)
    r = out["routers"]
    assert len(r["per_layer"]) == 2 and all(0 <= r[key] <= 1 for key in ("load_entropy", "top1_same", "topk_overlap"))
    assert all(math.isfinite(out[key]) for key in ("loss_first_copy", "loss_second_copy"))
    single = MossNetForCausalLM(MossNetConfig(**{**cfg.to_dict(), "ssm_experts": 1, "ssm_top_k": 1})).eval()
    assert run_probes(single, tokens, 32, 64, "cpu", contextlib.nullcontext)["routers"] is None
