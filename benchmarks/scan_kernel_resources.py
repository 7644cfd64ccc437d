"""Registers, spills and shared memory of every Triton scan kernel config, compiled for a Hopper
card (sm_90a) on a machine with no GPU.

    python benchmarks/scan_kernel_resources.py [--n 64 --p 64] [--states fp32|bf16]

Occupancy decides much of a memory-bound kernel's speed: a config at 255 registers a thread and
8 warps fills an SM's 65,536 registers with one block, so nothing hides its load latency. Triton
compiles without a device when given a target; ptxas (shipped with Triton) then reports the
registers and spills of the PTX. This answers "how many blocks fit an SM", not "how fast": only a
card times a kernel (`bench_scan.py`). Inputs as training runs the scan: bf16 x, B, C, dy; fp32
dt, A, D; the packed (varlen) layout of the compact form; half-precision operands on.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

REGISTERS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
SHARED_PER_SM = 228 * 1024  # H100 and H200: 228 KB of shared memory per SM (227 KB per block)
HALF = {"x", "B", "C", "dy", "y", "dx", "dB", "dC"}  # bf16 tensors; the rest fp32 or int32
INDEX = {"ts", "te", "cu", "cuch"}
CHUNK_STATES = {"h", "dh"}  # stored in --states; initial and final states stay fp32


def signature(fn, state_type: str) -> dict[str, str]:
    """Triton's signature of kernel ``fn``: pointer element types by tensor name, i32 sizes."""
    sig = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.annotation is not inspect.Parameter.empty:  # tl.constexpr
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            tensor = name.removesuffix("_ptr")
            sig[name] = ("*bf16" if tensor in HALF else "*i32" if tensor in INDEX
                         else state_type if tensor in CHUNK_STATES else "*fp32")
        else:
            sig[name] = "i32"
    return sig


def constants(kernel_name: str, chunk: int = 64) -> dict:
    """The launchers' constexprs for a training call (packed layout, bf16 inputs, no D)."""
    common = dict(IS_VARLEN=True, CHUNK=chunk, PREC="tf32")
    if kernel_name == "fwd_h":
        return dict(common, HAS_INIT=False, STORE_FINAL=False, LOWP=False)
    if kernel_name == "bwd_dh":
        return dict(common, HAS_DFINAL=False, STORE_DH0=False, LOWP=False)
    return dict(common, HAS_D=False, LOWP=True)


def compile_report(jit_fn, sig: dict, consts: dict, warps: int, stages: int, maxnreg: int | None = None) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(ASTSource(fn=jit_fn, signature=sig, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=warps, num_stages=stages, maxnreg=maxnreg))
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp, "k.ptx")
        ptx.write_text(compiled.asm["ptx"])
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", out).group(1))
    shared = compiled.metadata.shared
    threads = 32 * warps
    blocks = min(REGISTERS_PER_SM // (regs * threads), MAX_THREADS_PER_SM // threads,
                 SHARED_PER_SM // max(shared, 1))
    return dict(registers=regs, spill_bytes=spills, shared_bytes=shared, blocks_per_sm=blocks,
                warps_per_sm=blocks * warps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="state dimension N")
    ap.add_argument("--p", type=int, default=64, help="head dimension P")
    ap.add_argument("--states", choices=("fp32", "bf16"), default="fp32",
                    help="the dtype the chunk states are stored in (TritonScanOptions.state_bf16)")
    ap.add_argument("--kernels", default="fwd_h,fwd_o,bwd_dh,bwd_dx,bwd_dqk")
    ap.add_argument("--chunk", type=int, default=64, help="chunk length L (the op's chunk_size; default 64)")
    ap.add_argument("--maxnreg", default="",
                    help="also compile each config capped at these registers a thread (comma-separated), "
                         "as triton.Config(maxnreg=...) would: what a cap costs in spills")
    args = ap.parse_args()

    from mossnet.ops.mosse.triton.function import STAGE_KERNELS
    from mossnet.ops.mosse.triton.tuning import fit_configs

    state_type = "*fp32" if args.states == "fp32" else "*bf16"
    print(f"sm_90a, N = {args.n}, P = {args.p}, chunk {args.chunk}, bf16 inputs, {args.states} chunk states, "
          "packed layout")
    print(f"{'kernel':8s} {'config':58s} {'regs':>5s} {'spill B':>8s} {'smem KB':>8s} {'blocks/SM':>10s} "
          f"{'warps/SM':>9s}")
    for name in args.kernels.split(","):
        kernel = STAGE_KERNELS[name]
        jit = kernel._jit[False]
        sig = signature(jit.fn, state_type)
        for config in fit_configs(kernel.configs, args.n, args.p):
            consts = dict(constants(name, args.chunk), **config.kwargs)  # fitting sets BLOCK_N for every kernel
            consts = {k: v for k, v in consts.items() if k in sig}
            caps = [config.maxnreg] + [int(c) for c in args.maxnreg.split(",") if c]
            for cap in caps:
                r = compile_report(jit, sig, consts, config.num_warps, config.num_stages, cap)
                label = (", ".join(f"{k}={v}" for k, v in config.kwargs.items()) + f"; {config.num_warps} warps"
                         + (f"; maxnreg {cap}" if cap else ""))
                print(f"{name:8s} {label:58s} {r['registers']:5d} {r['spill_bytes']:8d} "
                      f"{r['shared_bytes'] / 1024:8.1f} {r['blocks_per_sm']:10d} {r['warps_per_sm']:9d}", flush=True)


if __name__ == "__main__":
    main()
