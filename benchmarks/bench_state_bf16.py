"""The Triton scan with its chunk states in bf16 (``ExecutionPolicy.triton_state_bf16``) against
the same scan with fp32 states: error against the fp64 reference, and fwd+bwd time.

The option may become the default only if y, the final state and every gradient (through the
initial state too) stay within relative RMS 5e-3 of the reference at T >= 1000, as the fp32
states do. This prints both, per output, so the decision reads off one table.

    python benchmarks/bench_state_bf16.py --out state_bf16.json                # GPU: spec-sized
    TRITON_INTERPRET=1 MOSSNET_TRITON_AUTOTUNE=0 python benchmarks/bench_state_bf16.py \\
        --lengths 1024 --experts 2 --dims 16 --no-timing                       # CPU interpreter

Inputs are random with routing-like zeros in dt (half the (token, expert) pairs idle), in the
training dtype (bf16 by default); the reference runs in fp64 on the same rounded values, with
the same upstream gradients (``tests/ops/test_triton_scan.py``'s ``run``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LIMIT = 5e-3


def inputs(batch: int, T: int, E: int, dim: int, dtype, device: str, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    dt = (torch.rand(batch, T, E, generator=g) * 0.6 + 0.05) * (torch.rand(batch, T, E, generator=g) < 0.5)
    raw = dict(x=torch.randn(batch, T, E, dim, generator=g).to(dtype), dt=dt,
               A=-(torch.rand(E, generator=g) * 1.5 + 0.1),
               B=(torch.randn(batch, T, E, dim, generator=g) / dim**0.5).to(dtype),
               C=torch.randn(batch, T, E, dim, generator=g).to(dtype), D=torch.randn(E, dim, generator=g),
               initial_state=torch.randn(batch, E, dim, dim, generator=g))
    return {k: v.to(device) for k, v in raw.items()}


def forward_backward(fn, leaves: dict, seed: int = 1):
    """y, final state and every gradient of <y, gy> + <final, gs> (gy rounded to y's dtype)."""
    import torch

    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    y, final = fn(**leaves)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(y.dtype).to(y.device, torch.float64)
    gs = torch.randn(final.shape, generator=g).to(final.device, torch.float64)
    loss = (y.double() * gy).sum() + (final.double() * gs).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"y": y, "final_state": final, **{f"d{k}": v for k, v in zip(leaves, grads)}}


def rel_rms(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


def measure(T: int, args) -> dict:
    import torch

    from mossnet.ops import mosse_scan
    from mossnet.ops.mosse.triton.function import mosse_scan_triton
    from mossnet.ops.mosse.triton.options import TritonScanOptions

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    x = inputs(args.batch, T, args.experts, args.dims, dtype, device)
    ref = forward_backward(lambda **a: mosse_scan(**{k: v.double() for k, v in a.items()}, output_final_state=True,
                                                  impl="chunked"), x)
    row: dict = {"T": T}
    for name, bf16 in (("fp32_states", False), ("bf16_states", True)):
        options = TritonScanOptions(autotune=False, state_bf16=bf16)
        fn = lambda **a: mosse_scan_triton(**a, output_final_state=True, options=options)  # noqa: E731
        out = forward_backward(fn, x)
        errors = {k: rel_rms(out[k], ref[k]) for k in ref}
        row[name] = {"rel_rms": errors, "worst": max(errors, key=errors.get), "within_limit": max(errors.values()) <= LIMIT}
        if not args.no_timing and device == "cuda":
            leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
            for _ in range(3):
                y, s = fn(**leaves)
                (y.float().sum() + s.sum()).backward()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                y, s = fn(**leaves)
                (y.float().sum() + s.sum()).backward()
            torch.cuda.synchronize()
            row[name]["fwd_bwd_ms"] = 1e3 * (time.perf_counter() - t0) / args.repeats
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--dims", type=int, default=64, help="P = N")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    try:
        import triton  # noqa: F401
    except ImportError:
        sys.exit("bench_state_bf16.py: needs Triton (and CUDA, or TRITON_INTERPRET=1)")
    import os

    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":  # the tests' patch for Triton's interpreter under NumPy 2
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from triton_interpreter_fix import fix_interpreter_for_numpy2

        fix_interpreter_for_numpy2()
    rows = []
    for T in (int(t) for t in args.lengths.split(",")):
        row = measure(T, args)
        rows.append(row)
        for name in ("fp32_states", "bf16_states"):
            r = row[name]
            timing = f", {r['fwd_bwd_ms']:.2f} ms fwd+bwd" if "fwd_bwd_ms" in r else ""
            print(f"T={T} {name}: worst {r['worst']} {r['rel_rms'][r['worst']]:.2e} "
                  f"({'within' if r['within_limit'] else 'over'} {LIMIT}){timing}", flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)",
              "settings": vars(args), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
