"""``mosse_scan`` / ``mosse_step``: every execution equals the reference loop (spec section 5).

Forward outputs, final states and the gradients of every input (x, dt, A, B, C, D and the
initial state) under random upstream gradients; odd lengths; chunk sizes that do not divide T;
dt with exact zeros (routing masks); packed batches through ``cu_seqlens``; bf16 inputs.

Tolerances (spec section 5): fp32 max|a - b| / max|b| < 1e-4; bf16 inputs relative RMS
<= 5e-3 against the fp32 reference; never a NaN.
"""

from __future__ import annotations

import pytest
import torch

from mossnet.ops import mosse_scan, mosse_step

FP32_TOL = 1e-4
BF16_TOL = 5e-3
NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


# The denominators have a floor of 1e-4 (all inputs are O(1)): a quantity that is exactly zero
# in the reference, e.g. dA when the state never leaves zero, may come out as 1e-9 of rounding.
FLOOR = 1e-4


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(FLOOR))


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(FLOOR))


def make_inputs(batch, T, E, P=5, N=3, with_D=True, with_init=True, n_states=None, zero_frac=0.3):
    """Random leaf tensors. dt is softplus-like positive with ~30% exact zeros (routing masks)."""
    x = torch.randn(batch, T, E, P)
    dt = torch.nn.functional.softplus(torch.randn(batch, T, E) - 1.0)
    dt = dt * (torch.rand(batch, T, E) > zero_frac)
    A = -torch.empty(E).uniform_(0.2, 2.0)
    B = torch.randn(batch, T, E, N)
    C = torch.randn(batch, T, E, N)
    D = torch.randn(E, P) if with_D else None
    init = torch.randn(batch if n_states is None else n_states, E, N, P) if with_init else None
    return {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "initial_state": init}


def leaves(inputs, dtype=None):
    """Fresh leaf copies that require grad; x, B, C cast to ``dtype`` (the low-precision inputs)."""
    out = {}
    for k, v in inputs.items():
        if v is None:
            out[k] = None
            continue
        v = v.detach().clone()
        if dtype is not None and k in ("x", "B", "C"):
            v = v.to(dtype)
        out[k] = v.requires_grad_(True)
    return out


def run(inputs, impl, gy=None, gs=None, dtype=None, **kw):
    """Forward + backward with the given upstream gradients. Returns y, final state, grads."""
    t = leaves(inputs, dtype)
    y, s = mosse_scan(
        t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["initial_state"],
        output_final_state=True, impl=impl, **kw,
    )
    if gy is None:
        gy = torch.randn(y.shape, device=y.device)
        gs = torch.randn(s.shape, device=s.device)
    (y.float() * gy).sum().add_((s * gs).sum()).backward()
    grads = {k: v.grad for k, v in t.items() if v is not None}
    return y, s, grads, (gy, gs)


def assert_close(got, want, tol, what, metric=max_rel):
    assert not torch.isnan(got).any(), f"{what}: NaN"
    err = metric(got, want)
    assert err < tol, f"{what}: error {err:.3g} >= {tol}"


@pytest.mark.parametrize("T", [1, 7, 63, 130])
@pytest.mark.parametrize("E", [1, 4])
@pytest.mark.parametrize("with_D", [True, False])
@pytest.mark.parametrize("with_init", [True, False])
def test_chunked_equals_reference_fp32(T, E, with_D, with_init):
    inputs = make_inputs(2, T, E, with_D=with_D, with_init=with_init)
    y_ref, s_ref, g_ref, up = run(inputs, "reference")
    # chunk 16 divides none of the lengths; T=1 and 7 are shorter than one chunk.
    y, s, g, _ = run(inputs, "chunked", *up, chunk_size=16)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert_close(y, y_ref, FP32_TOL, "y")
    assert_close(s, s_ref, FP32_TOL, "final_state")
    assert set(g) == set(g_ref) == {k for k in NAMES if inputs[k] is not None}
    for k in g_ref:
        assert_close(g[k], g_ref[k], FP32_TOL, f"grad {k}")


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64, 256])
@pytest.mark.parametrize("T", [63, 130])
def test_chunk_sizes_not_dividing_T(chunk_size, T):
    inputs = make_inputs(1, T, 3)
    y_ref, s_ref, g_ref, up = run(inputs, "reference")
    y, s, g, _ = run(inputs, "chunked", *up, chunk_size=chunk_size)
    assert_close(y, y_ref, FP32_TOL, "y")
    assert_close(s, s_ref, FP32_TOL, "final_state")
    for k in g_ref:
        assert_close(g[k], g_ref[k], FP32_TOL, f"grad {k}")


def test_all_zero_dt_leaves_state_and_gives_finite_grads():
    """An expert that no token routes to: its state passes through exactly, nothing is NaN."""
    inputs = make_inputs(2, 20, 3, zero_frac=0.0)
    inputs["dt"][:, :, 1] = 0.0
    for impl in ("reference", "chunked"):
        y, s, g, _ = run(inputs, impl, chunk_size=8)
        torch.testing.assert_close(s[:, 1], inputs["initial_state"][:, 1], rtol=0, atol=0)
        for k, v in g.items():
            assert torch.isfinite(v).all(), (impl, k)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("T", [7, 130])
def test_bf16_inputs_against_fp32_reference(impl, T):
    """bf16 x, B, C (dt, A, D and the state fp32): relative RMS <= 5e-3, forward and grads."""
    inputs = make_inputs(2, T, 4)
    for k in ("x", "B", "C"):  # make the fp32 reference see exactly the bf16 values
        inputs[k] = inputs[k].bfloat16().float()
    y_ref, s_ref, g_ref, up = run(inputs, "reference")
    y, s, g, _ = run(inputs, impl, *up, dtype=torch.bfloat16, chunk_size=16)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close(y, y_ref, BF16_TOL, "y", rel_rms)
    assert_close(s, s_ref, BF16_TOL, "final_state", rel_rms)
    for k in g_ref:
        assert_close(g[k], g_ref[k], BF16_TOL, f"grad {k}", rel_rms)


@pytest.mark.parametrize("E", [1, 4])
def test_T_steps_equal_one_scan(E):
    inputs = make_inputs(3, 11, E)
    state = inputs["initial_state"].clone()
    ys = []
    for t in range(11):
        y_t, state = mosse_step(
            state, inputs["x"][:, t], inputs["dt"][:, t], inputs["A"], inputs["B"][:, t], inputs["C"][:, t], inputs["D"]
        )
        ys.append(y_t)
    y_steps = torch.stack(ys, dim=1)
    y_ref, s_ref = mosse_scan(**inputs, output_final_state=True, impl="reference")
    # The reference is the same recurrence: bit-identical.
    torch.testing.assert_close(y_steps, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(state, s_ref, rtol=0, atol=0)
    y_ch, s_ch = mosse_scan(**inputs, output_final_state=True, impl="chunked", chunk_size=4)
    assert max_rel(y_steps, y_ch) < FP32_TOL and max_rel(state, s_ch) < FP32_TOL


def test_step_leaves_zero_dt_experts_untouched():
    inputs = make_inputs(2, 1, 4, zero_frac=0.0)
    dt = inputs["dt"][:, 0].clone()
    dt[0, 1] = 0.0
    dt[1, 3] = 0.0
    s0 = inputs["initial_state"]
    _, s1 = mosse_step(s0, inputs["x"][:, 0], dt, inputs["A"], inputs["B"][:, 0], inputs["C"][:, 0], inputs["D"])
    assert torch.equal(s1[0, 1], s0[0, 1]) and torch.equal(s1[1, 3], s0[1, 3])
    assert not torch.equal(s1[0, 0], s0[0, 0])


@pytest.mark.parametrize("impl,bound", [("reference", None), ("chunked", None), ("chunked", 3)])
@pytest.mark.parametrize("lengths", [[5, 1, 12], [5, 0, 12], [1], [0, 7, 0], [130, 63]])
@pytest.mark.parametrize("with_init", [True, False])
def test_cu_seqlens_equals_sequences_one_by_one(impl, bound, lengths, with_init):
    """A packed batch (batch 1 + cu_seqlens, one initial state per sequence) equals running
    each sequence alone, forward and gradients. Zero-length sequences are valid: their final
    state is their initial state. With ``max_seqlen`` (here the longest length + ``bound``)
    the chunked scan reads nothing back and pads every sequence to it: the same result."""
    E, P, N = 4, 5, 3
    total = sum(lengths)
    inputs = make_inputs(1, total, E, P, N, with_init=with_init, n_states=len(lengths))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    max_seqlen = None if bound is None else max(lengths) + bound
    y, s, g, (gy, gs) = run(inputs, impl, cu_seqlens=cu, chunk_size=16, max_seqlen=max_seqlen)
    assert y.shape == (1, total, E, P) and s.shape == (len(lengths), E, N, P)

    # One by one, with the reference loop, and the same upstream gradients.
    t = leaves(inputs)
    loss = 0.0
    for i, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        init = None if t["initial_state"] is None else t["initial_state"][i : i + 1]
        y_i, s_i = mosse_scan(
            t["x"][:, lo:hi], t["dt"][:, lo:hi], t["A"], t["B"][:, lo:hi], t["C"][:, lo:hi], t["D"], init,
            output_final_state=True, impl="reference",
        )
        if hi > lo:
            assert_close(y[:, lo:hi], y_i, FP32_TOL, f"y of sequence {i}")
        assert_close(s[i : i + 1], s_i, FP32_TOL, f"final state of sequence {i}")
        if init is not None and hi == lo:
            assert torch.equal(s[i], t["initial_state"][i].detach())
        loss = loss + (y_i * gy[:, lo:hi]).sum() + (s_i * gs[i : i + 1]).sum()
    loss.backward()
    for k in g:
        assert_close(g[k], t[k].grad, FP32_TOL, f"grad {k}")


def test_chunked_zero_length_sequence():
    """T = 0 is a valid (empty) scan for every execution: y is empty, the state passes through."""
    inputs = make_inputs(2, 0, 3)
    for impl in ("reference", "chunked"):
        y, s = mosse_scan(**inputs, output_final_state=True, impl=impl)
        assert y.shape == (2, 0, 3, 5)
        torch.testing.assert_close(s, inputs["initial_state"], rtol=0, atol=0)


def test_fp64_inputs_stay_fp64():
    """fp64 inputs are scanned in fp64 (the float64 identity tests rely on it)."""
    inputs = {k: (v.double() if v is not None else None) for k, v in make_inputs(1, 9, 2).items()}
    for impl in ("reference", "chunked"):
        y, s = mosse_scan(**inputs, output_final_state=True, impl=impl, chunk_size=4)
        assert y.dtype == torch.float64 and s.dtype == torch.float64
    y_r, s_r = mosse_scan(**inputs, output_final_state=True, impl="reference")
    y_c, s_c = mosse_scan(**inputs, output_final_state=True, impl="chunked", chunk_size=4)
    assert max_rel(y_c, y_r) < 1e-12 and max_rel(s_c, s_r) < 1e-12


def test_auto_is_chunked_on_cpu():
    from mossnet.ops import resolve_impl

    assert resolve_impl("auto", torch.zeros(1)) == "chunked"
    with pytest.raises(ValueError, match="unknown impl"):
        resolve_impl("nope", torch.zeros(1))


@pytest.mark.gpu
@pytest.mark.parametrize("T", [7, 130])
def test_auto_on_cuda_matches_reference(T):
    inputs = {k: (v.cuda() if v is not None else None) for k, v in make_inputs(2, T, 4).items()}
    y_ref, s_ref, g_ref, up = run(inputs, "reference")
    y, s, g, _ = run(inputs, "auto", *up)
    assert_close(y, y_ref, FP32_TOL, "y")
    assert_close(s, s_ref, FP32_TOL, "final_state")
    for k in g_ref:
        assert_close(g[k], g_ref[k], FP32_TOL, f"grad {k}")


@pytest.mark.parametrize("scale", [1e-4, 3.0, 30.0])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_extreme_step_sizes(scale, chunk_size):
    """Tiny and strong decays (dt * A down to about -500 per token): finite, and equal to the
    reference forward and backward. (A chunked scan that takes differences of prefix sums of
    dt * A loses dA to cancellation here.)"""
    inputs = make_inputs(2, 130, 3)
    inputs["dt"] = inputs["dt"] * scale
    inputs["A"] = -torch.tensor([1.0, 4.0, 16.0])
    y_ref, s_ref, g_ref, up = run(inputs, "reference")
    y, s, g, _ = run(inputs, "chunked", *up, chunk_size=chunk_size)
    assert_close(y, y_ref, FP32_TOL, "y")
    assert_close(s, s_ref, FP32_TOL, "final_state")
    for k in g_ref:
        assert torch.isfinite(g[k]).all(), k
        assert_close(g[k], g_ref[k], FP32_TOL, f"grad {k}")


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_strong_decay_chunked_as_accurate_as_the_loop(chunk_size):
    """Against a float64 truth, the fp32 chunked scan is as accurate as the fp32 loop (~1e-7),
    with a 1e-5 bound, under strong decays (dt * A down to about -500 per token). Guards the
    direct segment sums in chunked.py: differences of prefix sums lose dA to about 1e-3."""
    inputs = make_inputs(2, 130, 3, P=8, N=8)
    inputs["dt"] = inputs["dt"] * 30.0
    inputs["A"] = -torch.tensor([1.0, 4.0, 16.0])
    truth = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    y64, s64, g64, up = run(truth, "reference")
    up = tuple(u.float() for u in up)
    for impl in ("reference", "chunked"):
        y, s, g, _ = run(inputs, impl, *up, chunk_size=chunk_size)
        assert_close(y, y64, 1e-5, f"{impl} y")
        assert_close(s, s64, 1e-5, f"{impl} final_state")
        for k in g64:
            assert_close(g[k], g64[k], 1e-5, f"{impl} grad {k}")


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_zero_decay_is_finite_and_exact(impl):
    """A = 0 (no decay) on some experts: the state is the plain sum of the inputs, and every
    gradient is finite."""
    inputs = make_inputs(2, 37, 4)
    inputs["A"] = torch.tensor([0.0, -0.5, -0.0, -1.5])
    y, s, g, _ = run(inputs, impl, chunk_size=16)
    t = inputs
    plain = t["initial_state"][:, 0] + torch.einsum("bt,btn,btp->bnp", t["dt"][..., 0], t["B"][..., 0, :], t["x"][..., 0, :])
    torch.testing.assert_close(s[:, 0], plain, rtol=1e-5, atol=1e-5)
    assert all(torch.isfinite(v).all() for v in g.values())
    y_ref, s_ref, _, _ = run(inputs, "reference")
    assert_close(y, y_ref, FP32_TOL, "y")
