"""The dense routed short conv of the test-side reference layer (spec section 2.4): along each
expert's own subsequence of routed tokens, documents of a packed row kept apart, carried conv
state for generation; checked against a per-(row, expert) ``F.conv1d`` loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mosse_reference import routed_causal_conv, routed_causal_conv_reference


def random_docs(batch, T, n_docs):
    """(batch, T) doc ids: 0 ... with ``n_docs - 1`` random boundaries per row."""
    doc = torch.zeros(batch, T, dtype=torch.long)
    for b in range(batch):
        cuts = torch.randperm(T - 1)[: n_docs - 1] + 1
        for c in cuts.tolist():
            doc[b, c:] += 1
    return doc


@pytest.mark.parametrize("T", [1, 7, 30])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("with_docs", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_reference(T, K, with_docs, with_state):
    batch, E, C = 2, 3, 5
    x = torch.randn(batch, T, E, C, requires_grad=True)
    w = torch.randn(E, C, K, requires_grad=True)
    bias = torch.randn(E, C, requires_grad=True)
    visit = torch.rand(batch, T, E) > 0.4
    visit[0, :, 2] = False  # an expert that sees nothing in one row
    doc = random_docs(batch, T, 3) if with_docs and T > 2 else None
    state = torch.randn(batch, E, K - 1, C, requires_grad=True) if with_state else None

    out, new = routed_causal_conv(x, w, bias, visit, doc, state, output_final_state=True)
    ref, ref_new = routed_causal_conv_reference(x, w, bias, visit, doc, state, output_final_state=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new, ref_new, rtol=1e-5, atol=1e-5)
    assert (out[~visit] == 0).all(), "unvisited tokens must get 0"

    g_out, g_new = torch.randn_like(out), torch.randn_like(new)
    leaves = [t for t in (x, w, bias, state) if t is not None]
    got = torch.autograd.grad((out * g_out).sum() + (new * g_new).sum(), leaves)
    want = torch.autograd.grad((ref * g_out).sum() + (ref_new * g_new).sum(), leaves)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_equals_conv_of_compacted_subsequence():
    """Expert e's output at its k-th visited token depends only on its last K visited tokens
    (and the carried state), not on the tokens routed elsewhere."""
    T, E, C, K = 12, 2, 3, 4
    x = torch.randn(1, T, E, C)
    w = torch.randn(E, C, K)
    visit = torch.rand(1, T, E) > 0.5
    state = torch.randn(1, E, K - 1, C)
    out, new = routed_causal_conv(x, w, None, visit, None, state, output_final_state=True)
    for e in range(E):
        idx = visit[0, :, e].nonzero().flatten()
        seq = torch.cat([state[0, e], x[0, idx, e]])  # (K-1 + n, C)
        want = F.conv1d(seq.T[None], w[e][:, None, :], groups=C)[0].T
        torch.testing.assert_close(out[0, idx, e], want)
        torch.testing.assert_close(new[0, e], seq[-(K - 1):])


def test_unvisited_tokens_do_not_matter():
    T, E, C, K = 10, 3, 4, 4
    x = torch.randn(2, T, E, C)
    w = torch.randn(E, C, K)
    visit = torch.rand(2, T, E) > 0.5
    out, new = routed_causal_conv(x, w, None, visit, None, None, output_final_state=True)
    x2 = torch.where(visit[..., None], x, torch.randn_like(x) * 100)
    out2, new2 = routed_causal_conv(x2, w, None, visit, None, None, output_final_state=True)
    assert torch.equal(out, out2) and torch.equal(new, new2)


def test_chunks_with_carried_state_equal_one_pass():
    """Running a sequence in two chunks, carrying conv_state, equals one pass."""
    T, E, C, K = 15, 3, 4, 4
    x = torch.randn(2, T, E, C)
    w, b = torch.randn(E, C, K), torch.randn(E, C)
    visit = torch.rand(2, T, E) > 0.5
    full, s_full = routed_causal_conv(x, w, b, visit, None, None, output_final_state=True)
    a, s = routed_causal_conv(x[:, :6], w, b, visit[:, :6], None, None, output_final_state=True)
    c, s2 = routed_causal_conv(x[:, 6:], w, b, visit[:, 6:], None, s, output_final_state=True)
    torch.testing.assert_close(torch.cat([a, c], 1), full)
    torch.testing.assert_close(s2, s_full)
