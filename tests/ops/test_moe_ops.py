"""MoE plumbing: sorting assignments by expert and the grouped linear layer (spec section 3)."""

from __future__ import annotations

import pytest
import torch

from mossnet.ops.moe import dispatch_by_expert, grouped_linear, grouped_linear_reference


@pytest.mark.parametrize("n,k,E", [(1, 1, 1), (9, 2, 4), (17, 3, 5), (40, 2, 255), (30, 3, 300)])
@pytest.mark.parametrize("with_padding", [False, True])
def test_dispatch_sorts_stably_and_drops_padding(n, k, E, with_padding):
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(n)])
    valid = (torch.rand(n) > 0.3) if with_padding else None
    d = dispatch_by_expert(idx, valid, E)
    keep = torch.ones(n, dtype=torch.bool) if valid is None else valid
    n_kept = int(keep.sum()) * k

    # Counts = dispatches per expert, padding excluded; offsets are their cumulative sums.
    want_counts = torch.bincount(idx[keep].flatten(), minlength=E)
    assert torch.equal(d.counts, want_counts)
    assert d.offsets.dtype == torch.int32 and torch.equal(d.offsets.long(), want_counts.cumsum(0))
    assert int(d.offsets[-1]) == n_kept
    # The flag grouped_linear trusts to skip its mask: set only where nothing can be dropped.
    assert d.every_row_routed == (valid is None)

    # Rows before offsets[-1] are the valid assignments, grouped by expert, in token order.
    expert, token, slot = d.expert[:n_kept], d.token[:n_kept], d.slot[:n_kept]
    assert (expert[1:] >= expert[:-1]).all()
    for e in range(E):
        toks = token[expert == e]
        assert (toks[1:] > toks[:-1]).all()
        assert set(toks.tolist()) == {i for i in range(n) if keep[i] and e in idx[i].tolist()}
    # slot points back into the (n, k) table; token = slot // k.
    assert torch.equal(idx.flatten()[slot], expert)
    assert torch.equal(slot // k, token)
    # position inverts the sort: assignment a sits at sorted row position[a].
    assert torch.equal(d.slot[d.position], torch.arange(n * k))
    assert torch.equal(d.position[d.slot], torch.arange(n * k))
    # Dropped rows (padding) sort last under the virtual expert E.
    assert (d.expert[n_kept:] == E).all()
    assert set(d.token[n_kept:].tolist()) == set((~keep).nonzero().flatten().tolist())


@pytest.mark.parametrize("counts", [[3, 0, 4], [0, 0, 5], [2, 2, 2], [0, 0, 0]])
@pytest.mark.parametrize("extra_rows", [0, 2])
@pytest.mark.parametrize("impl", ["auto", "loop", "all_experts"])
def test_grouped_linear_matches_reference(counts, extra_rows, impl):
    """Empty groups, all rows in one group, and rows past offsets[-1] (dropped: zero)."""
    E, d_in, d_out = len(counts), 6, 4
    M = sum(counts) + extra_rows
    x = torch.randn(M, d_in, requires_grad=True)
    w = torch.randn(E, d_out, d_in, requires_grad=True)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    expert_of_row = torch.cat([torch.full((c,), e) for e, c in enumerate(counts)] + [torch.full((extra_rows,), E)])
    out = grouped_linear(x, w, offsets, impl=impl)
    ref = grouped_linear_reference(x, w, expert_of_row)
    torch.testing.assert_close(out, ref)
    assert (out[sum(counts):] == 0).all()
    g = torch.randn_like(out)
    # With no rows to compute the output may not depend on x or w at all: its gradient is 0.
    kw = dict(allow_unused=True, materialize_grads=True)
    got = torch.autograd.grad((out * g).sum(), (x, w), **kw) if out.requires_grad else (torch.zeros_like(x), torch.zeros_like(w))
    want = torch.autograd.grad((ref * g).sum(), (x, w), **kw)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("counts", [[3, 0, 4], [0, 0, 5], [0, 0, 0]])
def test_per_expert_custom_ops_pass_opcheck(counts):
    """The custom ops that stand for the loop under torch.compile: their fake (meta) functions,
    schemas and autograd registration, as torch.library.opcheck checks them."""
    from mossnet.ops.moe.grouped_linear import _per_expert_linear_op, _per_expert_weight_grad_op

    E, M = len(counts), sum(counts) + 2
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    x = torch.randn(M, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(E, 3, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_per_expert_linear_op, (x, w, offsets))
    torch.library.opcheck(_per_expert_weight_grad_op, (torch.randn(M, 3, dtype=torch.float64), x.detach(), offsets))
    assert torch.autograd.gradcheck(lambda a, b: _per_expert_linear_op(a, b, offsets), (x, w))


@pytest.mark.parametrize("counts", [[3, 0, 4], [2, 2, 2]])
def test_compiled_loop_is_one_graph_and_matches_reference(counts):
    """Under torch.compile the loop is one node (its host read would otherwise split the graph:
    fullgraph=True fails on a break); forward and gradients equal the reference."""
    E = len(counts)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    expert_of_row = torch.cat([torch.full((c,), e) for e, c in enumerate(counts)] + [torch.full((2,), E)])
    x = torch.randn(len(expert_of_row), 6, requires_grad=True)
    w = torch.randn(E, 4, 6, requires_grad=True)
    compiled = torch.compile(lambda a, b: grouped_linear(a, b, offsets, impl="loop"), fullgraph=True, backend="aot_eager")
    out, ref = compiled(x, w), grouped_linear_reference(x, w, expert_of_row)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * g).sum(), (x, w)), torch.autograd.grad((ref * g).sum(), (x, w))):
        torch.testing.assert_close(a, b)


def test_grouped_linear_impl_choice():
    from mossnet.errors import ConfigError
    from mossnet.ops.moe.grouped_linear import resolve_expert_matmul

    x, w = torch.randn(4, 3), torch.randn(2, 5, 3)
    assert resolve_expert_matmul("auto", x, w) == "loop"  # CPU eager
    assert resolve_expert_matmul("all_experts", x, w) == "all_experts"
    with pytest.raises(ConfigError, match="grouped_mm"):
        resolve_expert_matmul("grouped_mm", x, w)  # needs bf16 on a Hopper GPU
    with pytest.raises(ConfigError, match="unknown impl"):
        grouped_linear(x, w, torch.tensor([2, 4], dtype=torch.int32), impl="cutlass")


def test_grouped_linear_casts_weight_to_input_dtype():
    x = torch.randn(5, 4, dtype=torch.float64)
    w = torch.randn(2, 3, 4)
    out = grouped_linear(x, w, torch.tensor([2, 5], dtype=torch.int32))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, grouped_linear_reference(x, w.double(), torch.tensor([0, 0, 1, 1, 1])))


@pytest.mark.gpu
def test_grouped_mm_path_on_cuda():
    x = torch.randn(40, 16, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3, 8, 16, device="cuda", dtype=torch.bfloat16)
    offsets = torch.tensor([10, 10, 33], dtype=torch.int32, device="cuda")
    expert_of_row = torch.cat([torch.zeros(10), torch.full((23,), 2), torch.full((7,), 3)]).long().cuda()
    out = grouped_linear(x, w, offsets)
    ref = grouped_linear_reference(x.float(), w.float(), expert_of_row)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    # Every row routed (the training step's case): no mask, the same rows.
    routed = torch.tensor([10, 10, 40], dtype=torch.int32, device="cuda")
    out = grouped_linear(x, w, routed, every_row_routed=True)
    ref = grouped_linear_reference(x.float(), w.float(), torch.cat([torch.zeros(10), torch.full((30,), 2)]).long().cuda())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def _grouped_mm_runs_here() -> bool:
    from mossnet.ops.moe.grouped_linear import _grouped_mm

    try:
        _grouped_mm(torch.randn(2, 8), torch.randn(1, 8, 8), torch.tensor([2], dtype=torch.int32))
    except (RuntimeError, NotImplementedError):  # builds without a CPU grouped GEMM
        return False
    return True


@pytest.mark.parametrize("impl", ["loop", "all_experts", "grouped_mm_cpu"])
def test_every_row_routed_skips_the_mask_and_changes_nothing(impl):
    """With no dropped rows the result and both gradients are those of the masked product, and
    the select over the output (and its backward) is gone."""
    from mossnet.bench.launches import count_launches
    from mossnet.ops.moe.grouped_linear import _IMPLS

    if impl == "grouped_mm_cpu":
        if not _grouped_mm_runs_here():
            pytest.skip("torch._grouped_mm has no CPU kernel in this build")
        impl = "grouped_mm"
    torch.manual_seed(0)
    counts = [3, 0, 6]  # an empty group; every row routed
    x = torch.randn(sum(counts), 16, requires_grad=True)
    w = torch.randn(len(counts), 8, 16, requires_grad=True)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    g = torch.randn(sum(counts), 8)
    results, ops = {}, {}
    for flag in (False, True):
        def step(flag=flag):
            out = _IMPLS[impl](x, w, offsets, flag)
            results[flag] = (out.detach(), *torch.autograd.grad((out * g).sum(), (x, w)))
        ops[flag] = count_launches(step, torch.device("cpu"))["cpu_ops"]
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b)
    if impl != "loop":  # the loop writes into zeros: it has no mask to skip
        assert ops[True] < ops[False]
