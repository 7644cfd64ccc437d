"""The Triton MoSSE scan against the reference loop: forward, final state and every gradient.

Runs on CUDA when a GPU is present, and on the CPU under Triton's interpreter when
``TRITON_INTERPRET=1`` is set (tiny shapes: the interpreter is slow). Skipped otherwise, and
skipped entirely where Triton is not installed (the default CPU CI).

    TRITON_INTERPRET=1 MOSSNET_TRITON_AUTOTUNE=0 pytest tests/ops/test_triton_scan.py   # CPU
    pytest tests/ops/test_triton_scan.py                                               # GPU

Tolerances are spec section 5: fp32 max|a-b|/max|b| < 1e-4; bf16 inputs relative RMS <= 5e-3
against the fp32 (here fp64) reference on the same (rounded) inputs and the same upstream
gradient (rounded to y's dtype, as the op receives it); never a NaN.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU CI); the GPU fast path is not tested")

os.environ.setdefault("MOSSNET_TRITON_AUTOTUNE", "0")  # fixed configs: tests must not spend time tuning

from mossnet.ops import mosse_scan  # noqa: E402
from mossnet.ops.mosse.triton import function  # noqa: E402
from mossnet.ops.mosse.triton.function import mosse_scan_triton, why_unavailable  # noqa: E402
from mossnet.ops.mosse.triton.options import TritonScanOptions  # noqa: E402

from kernel_device import DEVICE  # noqa: E402

needs_backend = pytest.mark.skipif(
    DEVICE is None, reason="needs a CUDA device, or TRITON_INTERPRET=1 to run the kernels on the CPU"
)
on_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="larger shapes and bf16 run on CUDA only")

NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


def make_inputs(batch, T, E, N, P, *, with_d, with_init, n_states=None, seed=0, dtype=torch.float32):
    """Random inputs with routing-like zeros in dt: half the (token, expert) pairs are unrouted,
    and expert 0 is idle over a whole stretch, so whole chunks hit the routing skip."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, E, P, generator=g)
    B = torch.randn(batch, T, E, N, generator=g) / N**0.5
    C = torch.randn(batch, T, E, N, generator=g)
    dt = torch.rand(batch, T, E, generator=g) * 0.6 + 0.05
    dt = dt * (torch.rand(batch, T, E, generator=g) < 0.5)
    dt[:, : min(T, 40), 0] = 0.0
    A = -(torch.rand(E, generator=g) * 1.5 + 0.1)
    D = torch.randn(E, P, generator=g) if with_d else None
    h0 = torch.randn(n_states or batch, E, N, P, generator=g) if with_init else None
    out = dict(x=x.to(dtype), dt=dt, A=A, B=B.to(dtype), C=C.to(dtype), D=D, initial_state=h0)
    return {k: (v.to(DEVICE) if v is not None else None) for k, v in out.items()}


def run(inputs, impl_fn, cu_seqlens, upcast=False, gy_dtype=None):
    """Forward + backward of one execution; returns y, final state and the gradients.

    The upstream gradient of y is drawn in fp64 and rounded to ``gy_dtype`` (default: y's dtype):
    a bf16 op receives a bf16 dy, and the reference is given those same values, so that the
    comparison measures the kernels and not the rounding of dy."""
    leaves = {}
    for k, v in inputs.items():
        if v is None:
            leaves[k] = None
            continue
        v = v.detach().clone()
        if upcast:
            v = v.double()
        leaves[k] = v.requires_grad_(True)
    y, s = impl_fn(**leaves, output_final_state=True, cu_seqlens=cu_seqlens)
    assert y.dtype == leaves["x"].dtype and s.dtype in (torch.float32, torch.float64)
    g = torch.Generator().manual_seed(123)
    gy = torch.randn(y.shape, generator=g).to(gy_dtype or y.dtype).to(y.device, torch.float64)
    gs = torch.randn(s.shape, generator=g).float().to(s.device, torch.float64)
    loss = (y.double() * gy).sum() + (s.double() * gs).sum()
    grads = torch.autograd.grad(loss, [v for v in leaves.values() if v is not None])
    it = iter(grads)
    return y, s, {k: (next(it) if v is not None else None) for k, v in leaves.items()}


def reference(**kw):
    return mosse_scan(**kw, impl="reference")


def rel_max(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def rel_rms(a, b):
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def check(inputs, cu_seqlens=None, chunk_size=None, metric=rel_max, tol=1e-4, options=None):
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    if options is not None:
        kw["options"] = options
    fast = lambda **a: mosse_scan_triton(**a, **kw)  # noqa: E731
    y, s, g = run(inputs, fast, cu_seqlens)
    y_ref, s_ref, g_ref = run(inputs, reference, cu_seqlens, upcast=True, gy_dtype=y.dtype)
    errors = {"y": metric(y, y_ref), "final_state": metric(s, s_ref)}
    for k in NAMES:
        if g[k] is not None:
            assert g[k].dtype == inputs[k].dtype, k
            errors["d" + k] = metric(g[k], g_ref[k])
    for name, t in [("y", y), ("final_state", s), *[("d" + k, v) for k, v in g.items() if v is not None]]:
        assert not torch.isnan(t).any(), f"NaN in {name}"
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"errors over {tol}: {bad} (all: {errors})"


@needs_backend
@pytest.mark.parametrize("T", [1, 7, 63, 130])
@pytest.mark.parametrize("E", [1, 4])
def test_forward_backward_fp32(T, E):
    check(make_inputs(2, T, E, 16, 16, with_d=True, with_init=True, seed=T * 10 + E), chunk_size=16)


@needs_backend
@pytest.mark.parametrize("with_d,with_init", [(False, False), (True, False), (False, True)])
def test_optional_inputs(with_d, with_init):
    check(make_inputs(2, 45, 4, 16, 16, with_d=with_d, with_init=with_init, seed=7), chunk_size=16)


@needs_backend
def test_default_chunk_and_odd_dims():
    # N, P not multiples of 16 (masked tiles), default chunk of 64, T over two chunks.
    check(make_inputs(1, 130, 2, 12, 20, with_d=True, with_init=True, seed=3))


@needs_backend
@pytest.mark.parametrize("with_init", [False, True])
def test_varlen(with_init):
    # A zero-length sequence, lengths not multiples of the chunk, one longer than two chunks.
    bounds = [0, 5, 5, 40, 71, 72]
    cu = torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    inputs = make_inputs(1, bounds[-1], 4, 16, 16, with_d=True, with_init=with_init,
                         n_states=len(bounds) - 1, seed=11)
    check(inputs, cu_seqlens=cu, chunk_size=16)


@needs_backend
def test_varlen_equals_separate_calls():
    bounds = [0, 19, 50]
    cu = torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    inp = make_inputs(1, 50, 2, 16, 16, with_d=False, with_init=True, n_states=2, seed=5)
    y, s = mosse_scan_triton(**inp, output_final_state=True, cu_seqlens=cu, chunk_size=16)
    for i in range(2):
        lo, hi = bounds[i], bounds[i + 1]
        part = {k: (v[:, lo:hi] if k in ("x", "dt", "B", "C") else v) for k, v in inp.items()}
        part["initial_state"] = inp["initial_state"][i : i + 1]
        y_i, s_i = mosse_scan_triton(**part, output_final_state=True, chunk_size=16)
        assert rel_max(y[:, lo:hi], y_i) < 1e-5 and rel_max(s[i : i + 1], s_i) < 1e-5


@needs_backend
def test_dispatcher_and_idle_expert():
    inp = make_inputs(2, 33, 2, 16, 16, with_d=False, with_init=True, seed=9)
    inp["dt"][:, :, 1] = 0.0  # an expert that no token chose: state passes through unchanged
    y, s = mosse_scan(**inp, output_final_state=True, impl="triton")
    assert torch.equal(s[:, 1], inp["initial_state"][:, 1])
    y_ref, s_ref = mosse_scan(**inp, output_final_state=True, impl="reference")
    assert rel_max(y, y_ref) < 1e-4 and rel_max(s, s_ref) < 1e-4


@needs_backend
def test_no_final_state_and_empty():
    inp = make_inputs(1, 9, 2, 16, 16, with_d=True, with_init=False, seed=2)
    y, s = mosse_scan_triton(**inp)
    assert s is None and y.shape == inp["x"].shape
    empty = make_inputs(1, 0, 2, 16, 16, with_d=True, with_init=True, seed=2)
    y, s = mosse_scan_triton(**empty, output_final_state=True)
    assert y.shape[1] == 0 and torch.equal(s, empty["initial_state"])


def test_unavailable_reason_on_plain_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = why_unavailable(torch.zeros(1))
    assert why is not None and "CUDA" in why


@needs_backend
def test_explicit_options_are_used():
    # Options given explicitly run the same kernels as the same choices read from the environment
    # (the tests run with MOSSNET_TRITON_AUTOTUNE=0); specialisation computes the same function.
    inp = make_inputs(1, 40, 2, 16, 16, with_d=True, with_init=True, seed=4)
    y_env, s_env = mosse_scan_triton(**inp, output_final_state=True, chunk_size=16)
    fixed = TritonScanOptions(autotune=False)
    y, s = mosse_scan_triton(**inp, output_final_state=True, chunk_size=16, options=fixed)
    assert torch.equal(y, y_env) and torch.equal(s, s_env)
    specialized = TritonScanOptions(autotune=False, specialize=True)
    check(inp, chunk_size=16, options=specialized)


@pytest.mark.parametrize("interpret", [False, True])
def test_kernel_choices(monkeypatch, interpret):
    monkeypatch.setenv("TRITON_INTERPRET", "1" if interpret else "0")
    choose = function.kernel_choices
    assert choose(TritonScanOptions(), torch.float32).prec == "ieee"
    assert choose(TritonScanOptions(), torch.bfloat16).prec == "tf32"
    assert not choose(TritonScanOptions(), torch.float32).half_operands
    assert choose(TritonScanOptions(), torch.float16).half_operands
    assert not choose(TritonScanOptions(lowp=False), torch.float16).half_operands
    # The interpreter multiplies bf16 tiles wrongly and has no device timer.
    assert choose(TritonScanOptions(), torch.bfloat16).half_operands is not interpret
    assert choose(TritonScanOptions(autotune=True), torch.float32).autotune is not interpret
    assert choose(TritonScanOptions(specialize=True), torch.float32).specialize


def test_unavailable_when_the_interpreter_cannot_run_loops(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(function, "_interpreter_fault", lambda: "TypeError: boom")
    why = why_unavailable(torch.zeros(1))
    assert why is not None and "interpreter" in why and "boom" in why


def test_configs_fit_the_problem():
    from mossnet.ops.mosse.triton.tuning import fit_configs

    def meta(configs):
        return [(c.kwargs, c.num_warps) for c in configs]

    wide = [triton.Config(dict(BLOCK_P=64), num_warps=8), triton.Config(dict(BLOCK_P=32), num_warps=4)]
    # P = 20: the 64-wide tile is cut to 32 and its warps with it, so both become one config;
    # N not tiled: one tile over all of N.
    assert meta(fit_configs(wide, 12, 20)) == [(dict(BLOCK_P=32, BLOCK_N=16), 4)]
    assert meta(fit_configs(wide, 100, 64)) == [(dict(BLOCK_P=64, BLOCK_N=128), 8), (dict(BLOCK_P=32, BLOCK_N=128), 4)]
    assert meta(fit_configs(wide, 40, 16)) == [(dict(BLOCK_P=16, BLOCK_N=64), 2)]
    tiled = [triton.Config(dict(BLOCK_N=32, BLOCK_P=32), num_warps=4)]
    assert meta(fit_configs(tiled, 8, 8)) == [(dict(BLOCK_N=16, BLOCK_P=16), 1)]
    assert meta(fit_configs(tiled, 40, 20)) == [(dict(BLOCK_N=32, BLOCK_P=32), 4)]
    # A register cap stays with its config through fitting, and keeps it apart from the uncapped one.
    capped = tiled + [triton.Config(dict(BLOCK_N=32, BLOCK_P=32), num_warps=4, maxnreg=128)]
    assert [c.maxnreg for c in fit_configs(capped, 40, 20)] == [None, 128]
    assert [c.maxnreg for c in fit_configs(capped, 8, 8)] == [None, 128]
    # What faults on Triton 3.6 / Hopper (docs/GPU_NOTES.md) is never made by fitting, at any size.
    for name in ("fwd_o", "bwd_dx"):
        for N in (8, 16, 40, 64, 100):
            for P in (8, 16, 20, 32, 64, 128):
                fitted = meta(fit_configs(function.STAGE_KERNELS[name].configs, N, P))
                assert not [m for m in fitted if m[0]["BLOCK_P"] == 32 and m[1] == 8], (name, N, P, fitted)
    # The declared lists: every kernel has at most four candidates, the first being the default.
    assert all(1 <= len(k.configs) <= 4 for k in function.STAGE_KERNELS.values())
    assert sorted(function.STAGE_KERNELS) == ["bwd_dh", "bwd_dqk", "bwd_dx", "fwd_h", "fwd_o"]


@needs_backend
@on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    check(make_inputs(2, 300, 4, 64, 64, with_d=True, with_init=True, seed=21, dtype=dtype),
          metric=rel_rms, tol=5e-3)


@needs_backend
@on_gpu
def test_gpu_large_dims_fp32():
    # N = 128 and P = 96 > one P-block: the backward's loop over P blocks and masked P tails.
    check(make_inputs(1, 200, 2, 128, 96, with_d=True, with_init=True, seed=31))


@needs_backend
@on_gpu
def test_gpu_varlen_bf16_default_chunk():
    bounds = [0, 100, 101, 357, 500]
    cu = torch.tensor(bounds, dtype=torch.int32, device=DEVICE)
    inp = make_inputs(1, 500, 4, 64, 64, with_d=True, with_init=True, n_states=4, seed=41, dtype=torch.bfloat16)
    check(inp, cu_seqlens=cu, metric=rel_rms, tol=5e-3)


@needs_backend
@on_gpu
def test_auto_picks_triton_on_cuda():
    from mossnet.ops import resolve_impl

    assert resolve_impl("auto", torch.zeros(1, device="cuda")) == "triton"


@needs_backend
@on_gpu
def test_autotuned_launch_matches():
    # The tuned configs compute the same function as the default one.
    inp = make_inputs(2, 256, 4, 64, 64, with_d=True, with_init=True, seed=51, dtype=torch.bfloat16)
    old = os.environ.get("MOSSNET_TRITON_AUTOTUNE")
    os.environ["MOSSNET_TRITON_AUTOTUNE"] = "1"
    try:
        check(inp, metric=rel_rms, tol=5e-3)
    finally:
        os.environ["MOSSNET_TRITON_AUTOTUNE"] = old or "0"


@needs_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_chunk_states(dtype):
    """``state_bf16``: the chunk states and their gradients pass between the kernels in bf16. The
    same function, rounded once per chunk; the final state and dh0 stay fp32. (Whether it may
    become the default is measured at T >= 1000 by ``benchmarks/bench_state_bf16.py``.)"""
    from mossnet.ops.mosse.triton.function import kernel_choices

    options = TritonScanOptions(autotune=False, state_bf16=True)
    assert kernel_choices(options, dtype).state_dtype == torch.bfloat16
    inputs = make_inputs(2, 70, 2, 16, 32, with_d=True, with_init=True, seed=3, dtype=dtype)
    check(inputs, chunk_size=16, metric=rel_rms, tol=2e-2, options=options)


@needs_backend
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_small(dtype):
    check(make_inputs(2, 70, 2, 16, 32, with_d=True, with_init=True, seed=1, dtype=dtype),
          chunk_size=16, metric=rel_rms, tol=5e-3)


@needs_backend
@on_gpu
@pytest.mark.parametrize("T", [256, 2048])
def test_half_T_multiple_of_chunk(T):
    # T divisible by 16 / by the chunk: the case that broke on Hopper when T was specialised.
    check(make_inputs(2, T, 4, 64, 64, with_d=True, with_init=True, seed=T, dtype=torch.bfloat16),
          metric=rel_rms, tol=5e-3)


_CONFIG_CHECK = r"""
import json, sys, torch
from mossnet.ops import mosse_scan
from mossnet.ops.mosse.triton.function import STAGE_KERNELS
name, idx = sys.argv[1], int(sys.argv[2])
kernel = STAGE_KERNELS[name]
kernel.configs = [kernel.configs[idx]]  # this candidate alone
out = {}
# N = P = 64 (the presets), then the small heads of the MQAR studies (d_model 64): fitting cuts the
# tiles of those, so their configs differ from the declared ones.
for (b, T, E, k, N, P) in [(2, 256, 4, 4, 64, 64), (2, 300, 8, 2, 64, 64), (4, 2048, 8, 2, 64, 64),
                           (8, 256, 1, 1, 40, 32), (8, 300, 4, 2, 16, 16)]:
    g = torch.Generator(device="cuda").manual_seed(T)
    x = torch.randn(b, T, E, P, device="cuda", generator=g).bfloat16()
    B = (torch.randn(b, T, E, N, device="cuda", generator=g) / 8).bfloat16()
    C = torch.randn(b, T, E, N, device="cuda", generator=g).bfloat16()
    dt = torch.rand(b, T, E, device="cuda", generator=g) * 0.5 + 0.05
    keep = torch.zeros(b, T, E, dtype=torch.bool, device="cuda")
    keep.scatter_(-1, torch.rand(b, T, E, device="cuda", generator=g).topk(k, -1).indices, True)
    dt = dt * keep
    A = -torch.rand(E, device="cuda", generator=g) - 0.1
    D = torch.randn(E, P, device="cuda", generator=g)
    h0 = torch.randn(b, E, N, P, device="cuda", generator=g)
    res = {}
    for impl, cast in (("triton", lambda t: t), ("chunked", lambda t: t.float())):
        leaves = [cast(t).detach().requires_grad_(True) for t in (x, dt, A, B, C, D, h0)]
        y, s = mosse_scan(*leaves[:6], initial_state=leaves[6], output_final_state=True, impl=impl)
        gy = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
        gy = gy.bfloat16().float()  # what the bf16 op receives; the fp32 reference gets the same
        ((y.float() * gy).sum() + s.sum()).backward()
        res[impl] = [y, s] + [t.grad for t in leaves]
    rms = lambda a, r: ((a.double() - r.double()).pow(2).mean().sqrt() / r.double().pow(2).mean().sqrt()).item()
    names = ["y", "final_state", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0"]
    out[f"b{b}_T{T}_E{E}_N{N}_P{P}"] = {n: rms(a, r) for n, a, r in zip(names, res["triton"], res["chunked"])}
print("RESULT " + json.dumps(out))
"""


def _all_configs():
    return [(name, i) for name, kernel in function.STAGE_KERNELS.items() for i in range(len(kernel.configs))]


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's check of every candidate; a card runs the next test")
@pytest.mark.parametrize("name,idx", _all_configs())
def test_every_config_matches_under_the_interpreter(name, idx, monkeypatch):
    # Each candidate alone (its tiles, its ROW_SKIP, its register cap passed through the
    # launcher), varlen with carried states and D, against the reference. The interpreter checks
    # the indexing of a tile shape, not what the compiler makes of it: a card runs the next test.
    kernel = function.STAGE_KERNELS[name]
    monkeypatch.setattr(kernel, "configs", [kernel.configs[idx]])
    inputs = make_inputs(1, 83, 2, 20, 40, with_d=True, with_init=True, n_states=2)  # odd N, P: masked tiles
    cu = torch.tensor([0, 30, 83], dtype=torch.int32)
    check(inputs, cu_seqlens=cu)  # monkeypatch then restores the declared list (the setter forgets the fitting)


@needs_backend
@on_gpu
@pytest.mark.parametrize("name,idx", _all_configs())
def test_every_config_matches(name, idx):
    # Each autotuning candidate alone, in its own process (a bad config can leave the CUDA
    # context unusable), against the fp32 chunked path on bf16 inputs with top-k routing.
    import json
    import subprocess
    import sys

    env = dict(os.environ, MOSSNET_TRITON_AUTOTUNE="0")
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _CONFIG_CHECK, name, str(idx)], env=env,
                       capture_output=True, text=True, timeout=240)
    config = function.STAGE_KERNELS[name].configs[idx]
    assert r.returncode == 0, f"{name}[{idx}] {config} crashed:\n{r.stderr[-3000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    errs = json.loads(line[len("RESULT "):])
    bad = {shape: {k: v for k, v in e.items() if not v < 5e-3} for shape, e in errs.items()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{name}[{idx}] {config}: {bad}"
