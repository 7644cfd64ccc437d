"""The short conv on compact segments (``segment_causal_conv``), with carried windows in and
out, against a per-segment ``F.conv1d`` loop; and the decode step's window rule."""

from __future__ import annotations

import pytest
import torch

from mossnet.ops.conv import conv_at_rows, segment_causal_conv, segment_causal_conv_reference


def random_segments(M, S, generator=None):
    """(S+1,) int32 boundaries of S segments over M rows, some of them empty."""
    cuts = torch.randint(0, M + 1, (S - 1,), generator=generator).sort().values
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([M])]).to(torch.int32)


@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_window", [False, True])
def test_matches_per_segment_conv1d(M, K, with_bias, with_window):
    G, C, S = 3, 5, 6
    x = torch.randn(M, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G, C, K, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G, C, dtype=torch.float64, requires_grad=True) if with_bias else None
    window = torch.randn(S, K - 1, C, dtype=torch.float64, requires_grad=True) if with_window else None
    cu = random_segments(M, S)
    seg = torch.searchsorted(cu[1:].long(), torch.arange(M), right=True)
    group = torch.randint(0, G, (S,))[seg]  # one group per segment, as in the MoSSE
    assert_matches_reference(x, w, b, group, cu, window)


def assert_matches_reference(x, w, b, group, cu, window, uniform=False):
    """Output, final windows (copies of inputs: exact) and every gradient equal the reference's."""
    out, final = segment_causal_conv(x, w, b, group, cu, initial_window=window, output_final_window=True,
                                     uniform=uniform)
    ref, ref_final = segment_causal_conv_reference(x, w, b, group, cu, window)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=0, atol=0)
    g, g_final = torch.randn_like(out), torch.randn_like(final)
    leaves = [t for t in (x, w, b, window) if t is not None]
    got = torch.autograd.grad((out * g).sum() + (final * g_final).sum(), leaves)
    want = torch.autograd.grad((ref * g).sum() + (ref_final * g_final).sum(), leaves)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_given_segment_ids_equal_counted_ones():
    M, C, K = 12, 3, 4
    x, w = torch.randn(M, C), torch.randn(2, C, K)
    group = torch.tensor([0] * 5 + [1] * 7)
    cu = torch.tensor([0, 3, 3, 5, 12], dtype=torch.int32)
    seg = torch.tensor([0, 0, 0, 2, 2] + [3] * 7)
    assert torch.equal(segment_causal_conv(x, w, None, group, cu)[0], segment_causal_conv(x, w, None, group, cu, seg)[0])


def test_taps_stop_at_segment_starts():
    """Changing one segment's rows changes no other segment's outputs, and every segment's
    first row sees only itself (plus bias) without a window, and its window with one."""
    M, C, K = 12, 3, 4
    x = torch.randn(M, C)
    w, b = torch.randn(2, C, K), torch.randn(2, C)
    group = torch.tensor([0] * 5 + [1] * 7)
    cu = torch.tensor([0, 3, 3, 5, 12], dtype=torch.int32)
    out, _ = segment_causal_conv(x, w, b, group, cu)
    x2 = x.clone()
    x2[3:5] = torch.randn(2, C) * 100  # segment 2 only
    out2, _ = segment_causal_conv(x2, w, b, group, cu)
    assert torch.equal(out[:3], out2[:3]) and torch.equal(out[5:], out2[5:])
    for start in (0, 3, 5):
        g = int(group[start])
        torch.testing.assert_close(out[start], w[g, :, -1] * x[start] + b[g])
    window = torch.randn(4, K - 1, C)
    out3, final = segment_causal_conv(x, w, b, group, cu, initial_window=window, output_final_window=True)
    torch.testing.assert_close(out3[5], (w[1] * torch.cat([window[3], x[5:6]]).T).sum(-1) + b[1])
    assert torch.equal(final[1], window[1])  # an empty segment passes its window on
    assert torch.equal(final[2], torch.cat([window[2][2:], x[3:5]]))  # a short one keeps part of it


def test_decode_window_rule_equals_the_conv():
    """``conv_at_rows`` on a window (K-1 earlier inputs + the new one) is the conv's output at
    that input: what the decode step computes from its cache."""
    C, K = 4, 4
    w, b = torch.randn(1, C, K), torch.randn(1, C)
    x = torch.randn(9, C)
    out, _ = segment_causal_conv(x, w, b, torch.zeros(9, dtype=torch.long), torch.tensor([0, 9]))
    for t in range(K - 1, 9):
        got = conv_at_rows(x[t - K + 1 : t + 1], w, b, torch.zeros(1, dtype=torch.long), torch.tensor([K - 1]))
        torch.testing.assert_close(got[0], out[t])


def test_mixed_dtypes_promote():
    """bf16 rows with fp32 taps (autocast keeps the conv weights fp32) give fp32."""
    x = torch.randn(6, 3).to(torch.bfloat16)
    out, _ = segment_causal_conv(x, torch.randn(2, 3, 4), torch.randn(2, 3), torch.zeros(6, dtype=torch.long),
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


@pytest.mark.parametrize("L", [1, 2, 7])
@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_window", [False, True])
def test_uniform_segments_take_the_batch_path_with_equal_values_and_gradients(L, K, with_bias, with_window):
    """``uniform=True`` (S segments of L rows each, as in ``state_update="all"`` training): forward,
    final windows and every gradient equal the reference's."""
    G, C, S = 3, 5, 6
    M = S * L
    x = torch.randn(M, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(G, C, K, dtype=torch.float64, requires_grad=True)
    b = torch.randn(G, C, dtype=torch.float64, requires_grad=True) if with_bias else None
    window = torch.randn(S, K - 1, C, dtype=torch.float64, requires_grad=True) if with_window else None
    cu = (torch.arange(S + 1) * L).to(torch.int32)
    group = torch.randint(0, G, (S,)).repeat_interleave(L)
    assert_matches_reference(x, w, b, group, cu, window, uniform=True)


def test_uniform_path_keeps_the_mixed_precision_rule():
    """bf16 rows with fp32 taps: the output is fp32 (the promoted dtype) on both paths, equal
    to each other, and the input's gradient comes back in bf16."""
    S, L, C, K = 4, 9, 6, 4
    x = torch.randn(S * L, C).to(torch.bfloat16).requires_grad_()
    w, b = torch.randn(2, C, K), torch.randn(2, C)
    cu = (torch.arange(S + 1) * L).to(torch.int32)
    group = torch.tensor([0, 0, 1, 1]).repeat_interleave(L)
    fast, _ = segment_causal_conv(x, w, b, group, cu, uniform=True)
    slow, _ = segment_causal_conv(x, w, b, group, cu)
    assert fast.dtype == slow.dtype == torch.float32
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    (gx,) = torch.autograd.grad(fast.sum(), x)
    assert gx.dtype == torch.bfloat16


def test_a_uniform_promise_that_cannot_hold_is_refused():
    x, w = torch.randn(10, 3), torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="do not split into 3 segments"):
        segment_causal_conv(x, w, None, torch.zeros(10, dtype=torch.long), torch.tensor([0, 3, 6, 10]), uniform=True)
