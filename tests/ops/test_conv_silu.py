"""The fused segment conv + SiLU (Triton) against its PyTorch composition (segment conv, then
``F.silu``): output and every gradient, odd row counts and widths, empty and short segments,
segments and groups crossing the kernel's row blocks, no bias, bf16 rows with fp32 taps, carried
windows in and out.

The kernels run on CUDA, or on the CPU under Triton's interpreter:

    TRITON_INTERPRET=1 pytest tests/ops/test_conv_silu.py   # CPU
    pytest tests/ops/test_conv_silu.py                      # GPU

The dispatcher's refusals and fallbacks are tested everywhere.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_device import DEVICE, needs_kernels
from mossnet.errors import ConfigError
from mossnet.ops.conv import segment_causal_conv_reference, segment_conv_silu
from mossnet.ops.segments import segment_ids



def make_rows(lengths, C: int, G: int, K: int, dtype=torch.float32, bias: bool = True, seed: int = 0,
              device: str = "cpu"):
    """Segments of the given lengths (0 allowed), each of one group, groups non-decreasing as the
    layer's expert-sorted rows are; rows in ``dtype``, taps and bias fp32."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    M = int(cu[-1])
    seg_group = torch.sort(torch.randint(0, G, (len(lengths),), generator=g)).values
    seg = segment_ids(cu, M)
    group = seg_group[seg] if M else torch.zeros(0, dtype=torch.long)
    inputs = dict(x=(torch.randn(M, C, generator=g) * 1.5).to(dtype), weight=torch.randn(G, C, K, generator=g) * 0.6,
                  bias=torch.randn(G, C, generator=g) * 0.3 if bias else None)
    inputs = {k: (v.to(device).requires_grad_() if v is not None else None) for k, v in inputs.items()}
    return inputs, group.to(device), cu.to(device), seg.to(device)


def reference(x, weight, bias, group, cu):
    out, _ = segment_causal_conv_reference(x, weight, bias, group, cu)
    return F.silu(out)


def outputs_and_grads(fn, inputs, upstream_seed: int = 1):
    for v in inputs.values():
        if v is not None:
            v.grad = None
    out = fn(**inputs)
    g = torch.Generator().manual_seed(upstream_seed)
    upstream = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    (out * upstream).sum().backward()
    return out.detach(), {k: v.grad.detach() for k, v in inputs.items() if v is not None}


def assert_close(a, b, tol):
    a, b = a.double(), b.double()
    err = (a - b).abs().max() / b.abs().max().clamp_min(1e-12)
    assert err < tol, float(err)


CASES = [  # (segment lengths, C, groups, K)
    ([37, 0, 5, 1, 70, 2], 48, 3, 4),       # empty, one-row and shorter-than-K segments, blocks crossed
    ([129], 64, 1, 4),                       # one long segment, every row block one group
    ([3, 40, 0, 0, 33, 8, 19], 97, 5, 3),   # odd width (column blocks masked), K = 3
    ([16] * 9, 192, 4, 4),                   # uniform segments (E x batch of T), the layer's width
]


@needs_kernels
@pytest.mark.parametrize("lengths,C,G,K", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_the_composition_fp32(lengths, C, G, K, bias):
    inputs, group, cu, seg = make_rows(lengths, C, G, K, bias=bias, device=DEVICE)
    ref, ref_grads = outputs_and_grads(lambda **a: reference(**a, group=group, cu=cu), inputs)
    got, got_grads = outputs_and_grads(
        lambda **a: segment_conv_silu(**a, group=group, cu_seqlens=cu, segment=seg, impl="triton")[0], inputs)
    assert got.dtype == ref.dtype
    assert_close(got, ref, 1e-5)
    assert set(got_grads) == set(ref_grads)
    for name in ref_grads:
        assert_close(got_grads[name], ref_grads[name], 1e-5)


@needs_kernels
def test_bf16_rows_with_fp32_taps():
    """The layer's case under autocast: projections in bf16, conv taps fp32; out in fp32, dx in bf16."""
    inputs, group, cu, seg = make_rows([37, 0, 5, 70], 64, 3, 4, dtype=torch.bfloat16, device=DEVICE)
    ref, ref_grads = outputs_and_grads(lambda **a: reference(**a, group=group, cu=cu), inputs)
    got, got_grads = outputs_and_grads(
        lambda **a: segment_conv_silu(**a, group=group, cu_seqlens=cu, segment=seg, impl="triton")[0], inputs)
    assert got.dtype == torch.float32 and got_grads["x"].dtype == torch.bfloat16
    assert_close(got, ref, 1e-5)  # the same bf16 inputs, fp32 math
    assert_close(got_grads["x"], ref_grads["x"], 1e-2)  # rounded to bf16 at the end
    for name in ("weight", "bias"):
        assert_close(got_grads[name], ref_grads[name], 1e-5)


@needs_kernels
def test_no_rows():
    inputs, group, cu, seg = make_rows([0, 0], 8, 2, 4, device=DEVICE)
    out, final = segment_conv_silu(**inputs, group=group, cu_seqlens=cu, segment=seg, impl="triton")
    assert out.shape == (0, 8) and final is None
    out.sum().backward()
    assert inputs["weight"].grad.abs().sum() == 0


def test_auto_without_kernels_is_the_composition():
    """On a CPU without the interpreter (CI), "auto" runs the PyTorch composition."""
    if DEVICE == "cpu":
        pytest.skip("the interpreter runs the kernel here")
    inputs, group, cu, seg = make_rows([9, 0, 4], 6, 2, 4)
    got, final = segment_conv_silu(**inputs, group=group, cu_seqlens=cu, segment=seg, impl="auto")
    assert final is None
    torch.testing.assert_close(got, reference(**inputs, group=group, cu=cu))


@needs_kernels
@pytest.mark.parametrize("lengths", [[9, 0, 4, 1, 2, 40], [3], [0, 2]])
def test_final_windows_without_a_carried_one(lengths):
    """A prefill that fills a cache: the final windows of zero-started segments (a short or empty
    segment's window is padded with zeros)."""
    inputs, group, cu, seg = make_rows(lengths, 33, 3, 4, device=DEVICE)
    with torch.no_grad():
        got, final = segment_conv_silu(**inputs, group=group, cu_seqlens=cu, segment=seg, output_final_window=True,
                                       impl="triton")
        ref, ref_final = segment_causal_conv_reference(inputs["x"], inputs["weight"], inputs["bias"], group, cu)
    assert_close(got, F.silu(ref), 1e-5)
    torch.testing.assert_close(final, ref_final)


@needs_kernels
@pytest.mark.parametrize("lengths", [[9, 0, 4, 1, 2, 40], [3], [0, 2]])
def test_carried_windows_in_and_out(lengths):
    """A prompt continued from a cache: each segment starts from its window, and the final
    windows (a short or empty segment passes its window's tail on) equal the composition's;
    x and the taps still get their gradients."""
    K = 4
    inputs, group, cu, seg = make_rows(lengths, 70, 3, K, device=DEVICE)
    g = torch.Generator().manual_seed(7)
    window = torch.randn(len(lengths), K - 1, 70, generator=g).to(DEVICE)

    def composed(**a):
        out, final = segment_causal_conv_reference(a["x"], a["weight"], a["bias"], group, cu, window)
        composed.final = final
        return F.silu(out)

    def fused(**a):
        out, final = segment_conv_silu(**a, group=group, cu_seqlens=cu, segment=seg, initial_window=window,
                                       output_final_window=True, impl="triton")
        fused.final = final
        return out

    ref, ref_grads = outputs_and_grads(composed, inputs)
    got, got_grads = outputs_and_grads(fused, inputs)
    assert_close(got, ref, 1e-5)
    torch.testing.assert_close(fused.final, composed.final.to(fused.final.dtype))
    for name in ref_grads:
        assert_close(got_grads[name], ref_grads[name], 1e-5)


@needs_kernels
def test_a_window_that_needs_a_gradient_takes_the_composition():
    inputs, group, cu, seg = make_rows([9, 0, 4], 6, 2, 4, device=DEVICE)
    window = torch.randn(3, 3, 6, device=DEVICE, requires_grad=True)
    out, _ = segment_conv_silu(**inputs, group=group, cu_seqlens=cu, segment=seg, initial_window=window, impl="auto")
    out.sum().backward()
    assert window.grad is not None and window.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="carried conv windows"):
        segment_conv_silu(**inputs, group=group, cu_seqlens=cu, segment=seg, initial_window=window, impl="triton")


@needs_kernels
@pytest.mark.parametrize("K", [2, 4])
@pytest.mark.parametrize("C", [33, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("carried", [False, True])
def test_final_windows_kernel_equals_its_reference(K, C, dtype, carried):
    """The one-launch final windows (no gradient asked) copy exactly what the PyTorch gather
    does: rows from x, the carried window's tail for short and empty segments, zeros without
    one; rows of x with a row stride wider than C."""
    from mossnet.ops.conv.conv_silu_triton import final_windows, final_windows_reference

    lengths = [9, 0, 4, 1, 2, 40, 0, 3]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32).to(DEVICE)
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(sum(lengths), C + 5, generator=g).to(DEVICE, dtype)
    x = wide[:, :C]  # unit column stride, row stride C + 5
    window = torch.randn(len(lengths), K - 1, C, generator=g).to(DEVICE) if carried else None
    with torch.no_grad():
        got = final_windows(x, cu, window, K)
    want = final_windows_reference(x, cu, window, K)
    assert got.dtype == dtype and got.shape == (len(lengths), K - 1, C)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_final_windows_with_gradients_are_differentiable():
    """Asked for a gradient, final_windows is the differentiable PyTorch gather."""
    pytest.importorskip("triton")  # the module holds the kernel beside its reference
    from mossnet.ops.conv.conv_silu_triton import final_windows

    cu = torch.tensor([0, 3, 3, 5], dtype=torch.int32)
    x = torch.randn(5, 4, requires_grad=True)
    window = torch.randn(3, 2, 4, requires_grad=True)
    final_windows(x, cu, window, 3).sum().backward()
    # Segment 0 (3 rows) takes its last two rows; 1 (empty) its window; 2 (2 rows) its rows.
    assert x.grad[[1, 2, 3, 4]].eq(1).all() and x.grad[0].eq(0).all()
    assert window.grad[1].eq(1).all() and window.grad[[0, 2]].eq(0).all()
