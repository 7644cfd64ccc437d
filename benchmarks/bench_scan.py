"""Op-level benchmark of the MoSSE scan on a GPU: Triton fast path vs the PyTorch `chunked` path
(and flash-linear-attention's `chunk_simple_gla` when `fla` is importable).

    python benchmarks/bench_scan.py [--out bench_scan.json] [--shapes NAME,...] [--no-fla]

Inputs are bf16 (x, B, C), fp32 dt / A / D, with top-k routing: per token, k experts chosen at
random keep their dt, the others get dt = 0 (masked-dense form, spec section 2). Times are
medians of ``triton.testing.do_bench`` (CUDA events). "fwd" is y = scan(...); "fwd+bwd" adds
y.backward(dy) for every input. Bandwidth is the *minimum* traffic (every input read once,
every output written once; chunk states excluded) over the measured time, against a measured
device-to-device copy ceiling (bytes read + written). fla's equivalent call is
chunk_simple_gla(q=C, k=dt*B, v=x, g=dt*A, scale=1); the k and g it takes are precomputed
outside the timed region (so fla is timed on slightly less work than ours). Its backward on
Hopper is refused by fla itself for Triton < 3.7.1 (miscompiled there, fla issue #640); with
--fla-bwd-unsafe we lift that guard to time it, and report its gradient error against ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
from mossnet.bench.launches import kernel_table  # noqa: E402

SHAPES = {
    # name: (batch, T, E, N, P, k)
    "b8_T2048_E8_k2": (8, 2048, 8, 64, 64, 2),
    "b8_T2048_E32_k8": (8, 2048, 32, 64, 64, 8),
    "large_b8_T8192_E32_k8": (8, 8192, 32, 64, 64, 8),
    "gpu_b16_T8192_E8_k2": (16, 8192, 8, 64, 64, 2),
}
SMOKE_SHAPES = {"smoke_b2_T70_E4_k2": (2, 70, 4, 16, 16, 2)}  # --smoke: CPU + TRITON_INTERPRET=1


def make_inputs(batch, T, E, N, P, k, device, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, T, E, P, device=device, generator=g).to(dtype)
    B = (torch.randn(batch, T, E, N, device=device, generator=g) / N**0.5).to(dtype)
    C = torch.randn(batch, T, E, N, device=device, generator=g).to(dtype)
    dt = torch.nn.functional.softplus(torch.randn(batch, T, E, device=device, generator=g) - 1.0)
    scores = torch.rand(batch, T, E, device=device, generator=g)
    chosen = torch.zeros(batch, T, E, dtype=torch.bool, device=device)
    chosen.scatter_(-1, scores.topk(k, dim=-1).indices, True)
    dt = dt * chosen
    A = -torch.exp(torch.rand(E, device=device, generator=g) * 2 - 1)
    D = torch.randn(E, P, device=device, generator=g)
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=D)


def make_compact_inputs(batch, T, E, N, P, k, device, dtype=torch.bfloat16, seed=0):
    """The same routed work in the layout training runs (``layers/mosse.py``, compact layout):
    the n*k routed rows as one head, one segment per (expert, batch row) via ``cu_seqlens`` (equal
    segments of T*k/E rows: what uniform routing gives on average), each expert's decay folded
    into dt (A = -1). Only the chosen experts' rows exist, so this is 1/(E/k) of the dense work."""
    g = torch.Generator(device=device).manual_seed(seed)
    rows = batch * T * k
    seg = T * k // E
    x = torch.randn(1, rows, 1, P, device=device, generator=g).to(dtype)
    B = (torch.randn(1, rows, 1, N, device=device, generator=g) / N**0.5).to(dtype)
    C = torch.randn(1, rows, 1, N, device=device, generator=g).to(dtype)
    dt = torch.nn.functional.softplus(torch.randn(1, rows, 1, device=device, generator=g) - 1.0)
    A = -torch.ones(1, device=device)
    cu = torch.arange(0, rows + 1, seg, device=device, dtype=torch.int32)
    return dict(x=x, dt=dt, A=A, B=B, C=C), cu


def graph_ms(do_bench, fn, grads, rep):
    """Median ms of ``fn`` replayed from a CUDA graph (host launch cost excluded): warm-up on a
    side stream, one capture with every grad set to None (so the graph writes fresh grads), then
    timed replays."""
    from mossnet.cuda_graph import capture

    def with_fresh_grads():
        for t in grads:
            t.grad = None
        fn()

    graph, _ = capture(with_fresh_grads, warmup=3)
    return do_bench(graph.replay, warmup=25, rep=rep, return_mode="median")


def min_bytes(inp, with_bwd):
    """Each input read once, each output written once (fwd); the backward adds reading the
    inputs and dy again and writing one gradient per input."""
    ins = sum(t.numel() * t.element_size() for t in inp.values())
    y = inp["x"].numel() * inp["x"].element_size()
    if not with_bwd:
        return ins + y
    return (ins + y) + (ins + y) + ins


def copy_ceiling(do_bench, device):
    n = 512 * 1024 * 1024 if device == "cuda" else 1024 * 1024  # 1 GiB of fp16 each way
    a = torch.empty(n, dtype=torch.float16, device=device).normal_()
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    del a, b
    return 2 * n * 2 / (ms * 1e-3)


def rel_rms(a, b):
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


_PROBE = r"""
import json, torch
from mossnet.ops import mosse_scan
out = {}
for (b, T, E) in [(2, 256, 4), (2, 300, 4), (2, 2048, 8)]:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, T, E, 64, device="cuda", generator=g).bfloat16()
    B = (torch.randn(b, T, E, 64, device="cuda", generator=g) / 8).bfloat16()
    C = torch.randn(b, T, E, 64, device="cuda", generator=g).bfloat16()
    dt = torch.rand(b, T, E, device="cuda", generator=g) * (torch.rand(b, T, E, device="cuda", generator=g) < 0.3)
    A = -torch.rand(E, device="cuda", generator=g) - 0.1
    y, _ = mosse_scan(x, dt, A, B, C, impl="triton")
    r, _ = mosse_scan(x.float(), dt, A, B.float(), C.float(), impl="chunked")
    torch.cuda.synchronize()
    out[f"T{T}"] = ((y.double() - r.double()).pow(2).mean().sqrt() / r.double().pow(2).mean().sqrt()).item()
print("PROBE " + json.dumps(out))
"""


def specialize_probe():
    """y error of the Triton path with Triton's default integer specialisation, in a subprocess."""
    from mossnet.isolated_jobs import run_job

    env = dict(os.environ, MOSSNET_TRITON_SPECIALIZE="1", MOSSNET_TRITON_AUTOTUNE="0")
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    r = run_job([sys.executable, "-c", _PROBE], env=env, timeout=240)
    if r.timeout is not None:
        return "timeout"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    if r.returncode != 0 or not lines:
        return f"rc={r.returncode}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}"
    return json.loads(lines[-1][len("PROBE "):])


def kernel_profile(fn, iters: int = 10) -> list[tuple[str, float, int]]:
    """[(kernel name, ms per call of ``fn``, launches per call)], largest first: where the GPU
    time of one call goes (``torch.profiler`` device events; the call is warmed up first)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return kernel_table(prof.key_averages(), iters)


def print_kernel_profile(title: str, rows) -> None:
    total = sum(ms for _, ms, _ in rows) or 1.0
    print(f"-- {title}: {total:.3f} ms of kernels per call")
    for name, ms, count in rows[:12]:
        print(f"{ms:8.3f} ms {ms / total:6.1%} {count:4d}x  {name[:90]}")


def compact_calls(mosse_scan, batch, T, E, N, P, k, device):
    """The compact layout's calls, each a function of no arguments: "fwd", "fwdbwd" (the
    defaults), and the fwd+bwd of the two leads: "fwdbwd_state_bf16" (chunk states stored in bf16,
    the option the issue names) and "fwdbwd_chunk32" (chunks of 32: the output and dx kernels
    then compile to ~100 registers instead of ~240, scan_kernel_resources.py --chunk 32, at twice
    the chunk states). Returns (inputs, their gradient leaves, the calls)."""
    from mossnet.ops.mosse.triton.function import mosse_scan_triton
    from mossnet.ops.mosse.triton.options import options_from_env

    cin, cu = make_compact_inputs(batch, T, E, N, P, k, device)
    cleaves = {kk: v.detach().clone().requires_grad_(True) for kk, v in cin.items()}
    cdy = torch.randn_like(cin["x"])
    bf16_states = dataclasses.replace(options_from_env(), state_bf16=True)

    def backward_of(scan):
        def fwdbwd():
            y, _ = scan(**cleaves, cu_seqlens=cu)
            y.backward(cdy)
        return fwdbwd

    calls = {
        "fwd": lambda: mosse_scan(**cin, cu_seqlens=cu, impl="triton"),
        "fwdbwd": backward_of(lambda **a: mosse_scan(**a, impl="triton")),
        "fwdbwd_state_bf16": backward_of(lambda **a: mosse_scan_triton(**a, options=bf16_states)),
        "fwdbwd_chunk32": backward_of(lambda **a: mosse_scan_triton(**a, chunk_size=32)),
    }
    return cin, cleaves, calls


def time_graphed(row, do_bench, mosse_scan, inp, leaves, dy, batch, T, E, N, P, k, device, rep):
    """CUDA-graph-replay times of the dense (masked) Triton scan and of the compact layout's scan
    over the routed rows only (its minimum bytes count routed rows only), the compact fwd+bwd of
    the two leads, and the compact fwd+bwd's per-kernel GPU time."""
    try:
        row["triton_graph_fwd_ms"] = graph_ms(do_bench, lambda: mosse_scan(**inp, impl="triton"), [], rep)

        def dense_fb():
            y, _ = mosse_scan(**leaves, impl="triton")
            y.backward(dy)

        row["triton_graph_fwdbwd_ms"] = graph_ms(do_bench, dense_fb, list(leaves.values()), rep)
        cin, cleaves, calls = compact_calls(mosse_scan, batch, T, E, N, P, k, device)
        row["compact_rows"] = int(cin["x"].shape[1])
        row["compact_min_bytes_fwd"] = min_bytes(cin, False)
        row["compact_min_bytes_fwdbwd"] = min_bytes(cin, True)
        for name, call in calls.items():
            try:  # a lead that fails is reported and does not hide the defaults' numbers
                call()  # tune outside the timing
                grads = [] if name == "fwd" else list(cleaves.values())
                row[f"compact_graph_{name}_ms"] = graph_ms(do_bench, call, grads, rep)
            except Exception as e:  # noqa: BLE001
                if name in ("fwd", "fwdbwd"):
                    raise
                row[f"compact_graph_{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        for key in ("fwd", "fwdbwd"):
            seconds = row[f"compact_graph_{key}_ms"] * 1e-3
            row[f"compact_graph_{key}_GBps"] = row[f"compact_min_bytes_{key}"] / seconds / 1e9
        row["compact_kernels"] = kernel_profile(calls["fwdbwd"])
    except Exception as e:  # noqa: BLE001  (report, keep the other numbers)
        row["graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="JSON path (default: $OUT/bench_scan.json or ./bench_scan.json)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names from: " + ",".join(SHAPES))
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--fla-shapes", default="b8_T2048_E8_k2,gpu_b16_T8192_E8_k2",
                    help="shapes on which fla is timed (its autotuning is slow; 'all' for every shape)")
    ap.add_argument("--no-chunked", action="store_true", help="skip the PyTorch chunked baseline")
    ap.add_argument("--fla-bwd-unsafe", action="store_true", help="lift fla's Hopper/Triton<3.7.1 backward guard (timing only)")
    ap.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    ap.add_argument("--graph-shapes", default="gpu_b16_T8192_E8_k2,large_b8_T8192_E32_k8",
                    help="shapes also timed by CUDA-graph replay, with the compact (routed rows only) layout "
                         "('none' to skip)")
    ap.add_argument("--specialize-probe", action="store_true",
                    help="also run the kernels with Triton's integer specialisation (MOSSNET_TRITON_SPECIALIZE=1) "
                         "in a subprocess and report whether y still matches (the Hopper T %% 16 problem)")
    ap.add_argument("--smoke", action="store_true", help="check this script on the CPU under TRITON_INTERPRET=1")
    args = ap.parse_args()

    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from triton_interpreter_fix import fix_interpreter_for_numpy2

        fix_interpreter_for_numpy2()
    import triton

    if args.smoke:
        SHAPES.update(SMOKE_SHAPES)
        args.shapes, args.no_fla = ",".join(SMOKE_SHAPES), True

        def do_bench(fn, warmup=0, rep=0, grad_to_none=None, return_mode="median"):
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return sorted(ts)[1]
    else:
        from triton.testing import do_bench

    from mossnet.ops import mosse_scan
    from mossnet.ops.mosse.triton.function import DEFAULT_CHUNK, STAGE_KERNELS, kernel_choices
    from mossnet.ops.mosse.triton.geometry import Geometry
    from mossnet.ops.mosse.triton.options import options_from_env
    from mossnet.ops.mosse.triton.state import fwd_h

    device = "cpu" if args.smoke else "cuda"
    out_path = args.out or os.path.join(os.environ.get("OUT", "."), "bench_scan.json")
    props = torch.cuda.get_device_properties(0) if device == "cuda" else None
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": props.name if props else "cpu (interpreter smoke run)",
        "sms": props.multi_processor_count if props else 0,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
    }
    ceiling = copy_ceiling(do_bench, device)
    meta["copy_ceiling_GBps"] = ceiling / 1e9
    print(f"# {meta['device']}  torch {meta['torch']}  triton {meta['triton']}  copy ceiling {ceiling/1e9:.0f} GB/s", flush=True)

    fla_fn = None
    if not args.no_fla:
        fla_dir = os.path.join(ROOT, ".fla")
        if os.path.isdir(fla_dir):
            sys.path.insert(0, fla_dir)
        try:
            from fla.ops.simple_gla import chunk_simple_gla as fla_fn  # noqa: F811

            import fla

            meta["fla"] = getattr(fla, "__version__", "?")
            if args.fla_bwd_unsafe:
                import fla.ops.common.chunk_o as fla_chunk_o

                fla_chunk_o.TRITON_ABOVE_3_7_1 = True
                meta["fla_bwd_guard_lifted"] = True
        except Exception as e:  # noqa: BLE001
            meta["fla"] = f"unavailable: {type(e).__name__}: {e}"
            fla_fn = None
    print(f"# fla: {meta.get('fla', 'skipped')}", flush=True)

    if args.specialize_probe:
        meta["specialize_probe"] = specialize_probe()
        print(f"# specialize probe: {meta['specialize_probe']}", flush=True)

    results = []
    for name in args.shapes.split(","):
        batch, T, E, N, P, k = SHAPES[name]
        for kernel in STAGE_KERNELS.values():  # re-tune per shape so the log shows each shape's times
            kernel.reset_tuning()
        inp = make_inputs(batch, T, E, N, P, k, device)
        leaves = {kk: v.detach().clone().requires_grad_(True) for kk, v in inp.items()}
        dy = torch.randn_like(inp["x"])
        row = {"shape": name, "batch": batch, "T": T, "E": E, "N": N, "P": P, "k": k}
        bytes_f = min_bytes(inp, False)
        bytes_fb = min_bytes(inp, True)
        row["min_bytes_fwd"] = bytes_f
        row["min_bytes_fwdbwd"] = bytes_fb

        def fwd(impl):
            return lambda: mosse_scan(**inp, impl=impl)

        def fwdbwd(impl):
            def f():
                y, _ = mosse_scan(**leaves, impl=impl)
                y.backward(dy)
            return f

        grads_none = list(leaves.values())
        impls = ["triton"] + ([] if args.no_chunked else ["chunked"])
        for impl in impls:
            t0 = time.time()
            try:
                fwd(impl)()  # compile / tune outside the timing
                fwdbwd(impl)()
            except torch.OutOfMemoryError as e:  # the chunked path at the large shapes
                row[f"{impl}_error"] = f"OOM: {str(e)[:200]}"
                torch.cuda.empty_cache()
                continue
            if device == "cuda":
                torch.cuda.synchronize()
            row[f"{impl}_first_call_s"] = time.time() - t0
            ms_f = do_bench(fwd(impl), warmup=25, rep=args.rep, return_mode="median")
            ms_fb = do_bench(fwdbwd(impl), warmup=25, rep=args.rep, grad_to_none=grads_none, return_mode="median")
            row[f"{impl}_fwd_ms"] = ms_f
            row[f"{impl}_fwdbwd_ms"] = ms_fb
            row[f"{impl}_fwd_GBps"] = bytes_f / (ms_f * 1e-3) / 1e9
            row[f"{impl}_fwdbwd_GBps"] = bytes_fb / (ms_fb * 1e-3) / 1e9
            torch.cuda.empty_cache()
        # Breakdown of our forward: the state pass alone (tuned config).
        xs, dts, Bs = inp["x"].contiguous(), inp["dt"].contiguous(), inp["B"].contiguous()
        geo = Geometry(batch, T, None, DEFAULT_CHUNK, device)
        choices = kernel_choices(options_from_env(), xs.dtype)
        row["triton_fwd_h_ms"] = do_bench(
            lambda: fwd_h(xs, dts, inp["A"], Bs, None, geo, choices, False),
            warmup=25, rep=args.rep, return_mode="median")
        # Agreement with the chunked path on this input (forward and dx).
        y_t, _ = mosse_scan(**inp, impl="triton")
        y_c, _ = mosse_scan(**inp, impl="chunked")
        row["fwd_rel_rms_vs_chunked"] = rel_rms(y_t, y_c)
        del y_c
        torch.cuda.empty_cache()

        if device == "cuda" and name in args.graph_shapes.split(","):
            time_graphed(row, do_bench, mosse_scan, inp, leaves, dy, batch, T, E, N, P, k, device, args.rep)

        if fla_fn is not None and (args.fla_shapes == "all" or name in args.fla_shapes.split(",")):
            q, kk_, v = inp["C"], (inp["dt"][..., None] * inp["B"].float()).to(inp["B"].dtype), inp["x"]
            gg = inp["dt"] * inp["A"]
            try:
                o, _ = fla_fn(q, kk_, v, g=gg, scale=1.0)
                y_nod, _ = mosse_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], impl="triton")
                row["fla_fwd_rel_rms_vs_ours"] = rel_rms(o, y_nod)
                ms = do_bench(lambda: fla_fn(q, kk_, v, g=gg, scale=1.0), warmup=25, rep=args.rep, return_mode="median")
                row["fla_fwd_ms"] = ms
                row["fla_fwd_GBps"] = bytes_f / (ms * 1e-3) / 1e9
            except Exception as e:  # noqa: BLE001
                row["fla_fwd_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            try:
                fl = [t.detach().clone().requires_grad_(True) for t in (q, kk_, v, gg)]

                def fla_fb():
                    o, _ = fla_fn(*fl[:3], g=fl[3], scale=1.0)
                    o.backward(dy)

                fla_fb()
                ms = do_bench(fla_fb, warmup=25, rep=args.rep, grad_to_none=fl, return_mode="median")
                row["fla_fwdbwd_ms"] = ms
                row["fla_fwdbwd_GBps"] = bytes_fb / (ms * 1e-3) / 1e9
                if device == "cuda" and name in args.graph_shapes.split(","):
                    row["fla_graph_fwd_ms"] = graph_ms(
                        do_bench, lambda: fla_fn(q, kk_, v, g=gg, scale=1.0), [], args.rep)
                    row["fla_graph_fwdbwd_ms"] = graph_ms(do_bench, fla_fb, fl, args.rep)
                    row["fla_kernels"] = kernel_profile(fla_fb)
                # its dv against our dx (no D): is the lifted-guard backward right on this stack?
                ol = [t.detach().clone().requires_grad_(True) for t in (inp["x"], inp["B"], inp["C"])]
                y2, _ = mosse_scan(ol[0], inp["dt"], inp["A"], ol[1], ol[2], impl="triton")
                y2.backward(dy)
                for t in fl:
                    t.grad = None
                o, _ = fla_fn(*fl[:3], g=fl[3], scale=1.0)
                o.backward(dy)
                row["fla_dv_rel_rms_vs_our_dx"] = rel_rms(fl[2].grad, ol[0].grad)
                row["fla_dq_rel_rms_vs_our_dC"] = rel_rms(fl[0].grad, ol[2].grad)
            except Exception as e:  # noqa: BLE001
                row["fla_fwdbwd_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        row["tune_log"] = {
            kname: [(cfg, round(ms, 4)) for cfg, ms in kernel.tuning_log()]
            for kname, kernel in STAGE_KERNELS.items() if kernel.tuning_log()
        }
        results.append(row)
        del inp, leaves, dy
        torch.cuda.empty_cache()
        print(json.dumps({kk: v for kk, v in row.items() if kk != "tune_log"}), flush=True)
        for kname, log in row["tune_log"].items():
            print(f"  tune {kname}: " + "; ".join(
                f"{ {kk: vv for kk, vv in c.items() if kk not in ('num_stages',)} } {ms:.3f}ms" for c, ms in log), flush=True)
        # written after every shape, so a run cut short keeps what it measured
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)

    if args.smoke:  # the graph-timed section's calls, run once each (no CUDA graph on the CPU)
        name = next(iter(SMOKE_SHAPES))
        _, _, calls = compact_calls(mosse_scan, *SHAPES[name], device)
        for call in calls.values():
            call()
        print(f"# smoke: the compact calls ran: {', '.join(calls)}", flush=True)

    # Table last (the device tool returns the tail of the output).
    print(f"\nMoSSE scan, bf16 x/B/C, {meta['device']}, copy ceiling {ceiling/1e9:.0f} GB/s; "
          "GB/s = minimum traffic / time (% of ceiling)")
    hdr = f"{'shape':26s} {'pass':8s} {'triton ms':>10s} {'GB/s (%)':>13s} {'chunked ms':>11s} {'speedup':>8s} {'fla ms':>8s}"
    print(hdr)
    for r in results:
        for pas, key in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")):
            t = r.get(f"triton_{key}_ms")
            c = r.get(f"chunked_{key}_ms")
            fl = r.get(f"fla_{key}_ms")
            gb = r.get(f"triton_{key}_GBps")
            if t is None:
                print(f"{r['shape']:26s} {pas:8s} failed: {r.get('triton_error', '?')[:80]}")
                continue
            print(f"{r['shape']:26s} {pas:8s} {t:10.3f} {gb:7.0f} ({100*gb*1e9/ceiling:3.0f}%) "
                  f"{(f'{c:11.3f}' if c else '          -')} {(f'{c/t:7.1f}x' if c else '       -')} "
                  f"{(f'{fl:8.3f}' if fl else '       -')}")
    graphed = [r for r in results if "triton_graph_fwd_ms" in r or "graph_error" in r]
    if graphed:
        print(f"\nCUDA-graph replay (no launch cost). compact = the routed rows only, as training runs the "
              f"scan; its GB/s counts routed-row bytes (% of {ceiling/1e9:.0f} GB/s)")
        print(f"{'shape':26s} {'pass':8s} {'dense ms':>9s} {'compact ms':>11s} {'compact GB/s (%)':>17s} "
              f"{'fla ms':>8s} {'compact/fla':>12s}")
        for r in graphed:
            if "graph_error" in r:
                print(f"{r['shape']:26s} failed: {r['graph_error'][:90]}")
                continue
            for pas, key in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")):
                d, c = r[f"triton_graph_{key}_ms"], r[f"compact_graph_{key}_ms"]
                gb, fl = r[f"compact_graph_{key}_GBps"], r.get(f"fla_graph_{key}_ms")
                print(f"{r['shape']:26s} {pas:8s} {d:9.3f} {c:11.3f} {gb:9.0f} ({100*gb*1e9/ceiling:3.0f}%) "
                      f"{(f'{fl:8.3f}' if fl else '       -')} {(f'{c/fl:11.2f}x' if fl else '           -')}")
            for key, what in (("state_bf16", "chunk states in bf16"), ("chunk32", "chunks of 32")):
                ms = r.get(f"compact_graph_fwdbwd_{key}_ms")
                if ms:
                    print(f"{r['shape']:26s} fwd+bwd, {what}: compact {ms:.3f} ms "
                          f"({ms / r['compact_graph_fwdbwd_ms']:.3f}x the default)")
                elif r.get(f"compact_graph_fwdbwd_{key}_error"):
                    print(f"{r['shape']:26s} fwd+bwd, {what}: failed: {r[f'compact_graph_fwdbwd_{key}_error'][:80]}")
        for r in graphed:
            for who in ("compact", "fla"):
                if r.get(f"{who}_kernels"):
                    print_kernel_profile(f"{r['shape']}, {who} fwd+bwd (eager call)", r[f"{who}_kernels"])
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
