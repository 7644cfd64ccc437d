"""The short conv on compact segments (``segment_causal_conv``): against a per-segment
``F.conv1d`` loop and against the dense routed conv it replaces in the MoSSE training path."""

from __future__ import annotations

import pytest
import torch

from mossnet.ops.conv import routed_causal_conv, segment_causal_conv, segment_causal_conv_reference


def random_segments(M, S, generator=None):
    """(S+1,) int32 boundaries of S segments over M rows, some of them empty."""
    cuts = torch.randint(0, M + 1, (S - 1,), generator=generator).sort().values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([M])]).to(torch.int32)


@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_per_segment_conv1d(M, K, with_bias):
    G, C, S = 3, 5, 6
    x = torch.randn(M, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G, C, K, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G, C, dtype=torch.float64, requires_grad=True) if with_bias else None
    cu = random_segments(M, S)
    seg = torch.searchsorted(cu[1:].long(), torch.arange(M), right=True)
    group = torch.randint(0, G, (S,))[seg]  # one group per segment, as in the MoSSE
    out = segment_causal_conv(x, w, b, group, cu)
    ref = segment_causal_conv_reference(x, w, b, group, cu)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    leaves = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad((out * g).sum(), leaves)
    want = torch.autograd.grad((ref * g).sum(), leaves)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_taps_stop_at_segment_starts():
    """Changing one segment's rows changes no other segment's outputs, and every segment's
    first row sees only itself (plus bias)."""
    M, C, K = 12, 3, 4
    x = torch.randn(M, C)
    w, b = torch.randn(2, C, K), torch.randn(2, C)
    group = torch.tensor([0] * 5 + [1] * 7)
    cu = torch.tensor([0, 3, 3, 5, 12], dtype=torch.int32)
    out = segment_causal_conv(x, w, b, group, cu)
    x2 = x.clone()
    x2[3:5] = torch.randn(2, C) * 100  # segment 2 only
    out2 = segment_causal_conv(x2, w, b, group, cu)
    assert torch.equal(out[:3], out2[:3]) and torch.equal(out[5:], out2[5:])
    for start in (0, 3, 5):
        g = int(group[start])
        torch.testing.assert_close(out[start], w[g, :, -1] * x[start] + b[g])


@pytest.mark.parametrize("T", [1, 9, 30])
def test_equals_routed_conv_on_dispatched_rows(T):
    """The MoSSE use: rows sorted by (expert, batch row, time), one segment per (expert, row),
    give the dense routed conv's outputs at the visited (b, t, e)."""
    batch, E, C, K = 2, 3, 4, 4
    x = torch.randn(batch, T, E, C, dtype=torch.float64)
    w, b = torch.randn(E, C, K, dtype=torch.float64), torch.randn(E, C, dtype=torch.float64)
    visit = torch.rand(batch, T, E) > 0.5
    visit[1, :, 0] = False  # an expert with nothing in one row: an empty segment
    dense, _ = routed_causal_conv(x, w, b, visit)
    # The compact rows in (expert, row, time) order, as dispatch_by_expert sorts them.
    e_idx, b_idx, t_idx = visit.permute(2, 0, 1).nonzero(as_tuple=True)
    rows = x[b_idx, t_idx, e_idx]
    sizes = torch.bincount(e_idx * batch + b_idx, minlength=E * batch)
    cu = torch.nn.functional.pad(sizes.cumsum(0), (1, 0)).to(torch.int32)
    out = segment_causal_conv(rows, w, b, e_idx, cu)
    torch.testing.assert_close(out, dense[b_idx, t_idx, e_idx], rtol=1e-12, atol=1e-12)


def test_mixed_dtypes_promote_like_the_dense_conv():
    """bf16 rows with fp32 taps (autocast keeps the conv weights fp32) give fp32, as
    ``routed_causal_conv`` does."""
    x = torch.randn(6, 3).to(torch.bfloat16)
    out = segment_causal_conv(x, torch.randn(2, 3, 4), torch.randn(2, 3), torch.zeros(6, dtype=torch.long),
                              torch.tensor([0, 6], dtype=torch.int32))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("M", [0, 5, 300])
def test_gather_rows_matches_index_select(M):
    """The spread-lane backward of gather_rows equals index_select's scatter-add."""
    from mossnet.ops.conv import gather_rows

    table = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 3, (M,))  # group 3 gets no row: zero gradient
    g = torch.randn(M, 3, 2, dtype=torch.float64)
    got = torch.autograd.grad((gather_rows(table, index) * g).sum(), table)[0]
    want = torch.autograd.grad((table.index_select(0, index) * g).sum(), table)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (got[3] == 0).all()
