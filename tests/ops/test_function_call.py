"""apply_function: autograd's Function where a gradient can flow, its bare forward elsewhere."""

import pytest
import torch

from mossnet.ops.conv.segment_conv import gather_rows
from mossnet.ops.function_call import apply_function, needs_autograd


class _ScaleAndCount(torch.autograd.Function):
    """out = 3 x; counts how often the forward and backward run."""

    forwards = 0
    backwards = 0

    @staticmethod
    def forward(ctx, x, tag):
        _ScaleAndCount.forwards += 1
        ctx.save_for_backward(x)
        ctx.tag = tag
        ctx.mark_non_differentiable()
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        _ScaleAndCount.backwards += 1
        return grad * 3, None


def test_no_grad_runs_the_bare_forward_with_the_same_result():
    x = torch.randn(5, requires_grad=True)
    with torch.no_grad():
        out = apply_function(_ScaleAndCount, x, "t")
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, x.detach() * 3)


def test_grad_flows_through_autograd():
    x = torch.randn(5, requires_grad=True)
    before = _ScaleAndCount.backwards
    out = apply_function(_ScaleAndCount, x, "t")
    assert out.grad_fn is not None
    out.sum().backward()
    assert _ScaleAndCount.backwards == before + 1
    torch.testing.assert_close(x.grad, torch.full((5,), 3.0))


@pytest.mark.parametrize("grad_mode, requires_grad, expected", [
    (True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_needs_autograd(grad_mode, requires_grad, expected):
    x = torch.randn(3, requires_grad=requires_grad)
    with torch.set_grad_enabled(grad_mode):
        assert needs_autograd((x, 2, None)) is expected


def test_inference_mode_takes_the_bare_forward():
    with torch.inference_mode():
        x = torch.randn(4)
        assert not needs_autograd((x,))
        torch.testing.assert_close(apply_function(_ScaleAndCount, x, "t"), x * 3)


def test_a_real_op_gives_the_same_rows_both_ways():
    table = torch.randn(3, 4, requires_grad=True)
    index = torch.tensor([2, 0, 0, 1, 2])
    with_grad = gather_rows(table, index)
    with torch.no_grad():
        without = gather_rows(table, index)
    assert with_grad.grad_fn is not None and without.grad_fn is None
    torch.testing.assert_close(with_grad.detach(), without)


def test_forward_mode_ad_goes_through_autograd():
    """Under forward-mode AD the Function's own rule decides (here: it has none, so it says so),
    never the bare forward, which would drop the tangent."""
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(torch.randn(3), torch.ones(3))
        assert needs_autograd((dual,))
        with pytest.raises(RuntimeError):
            apply_function(_ScaleAndCount, dual, "t")


def test_torch_func_transforms_go_through_autograd():
    seen = []

    def f(x):
        seen.append(needs_autograd((x,)))
        return x * 2

    torch.func.vmap(f)(torch.randn(2, 3))
    assert seen == [True]
