#!/usr/bin/env python
"""Cost against work: training tokens/s and peak memory against sequence length and model size.

Every step holds the same number of tokens (``--tokens-per-step``, 32,768; batch = tokens /
length), so a model whose cost is linear in the length keeps a flat per-token cost while
attention's grows. Two sweeps (``--sweeps``):

* ``length``: every model at ``--length-size`` (``base``) over ``--lengths`` (2k, 8k, 32k);
* ``size``: every model at ``--size-length`` (2048) over ``--sizes`` (``small``, ``base``,
  ``large``, the ~1B preset).

Models, at each size: ``mossnet`` (the preset), ``ssm-1head`` (the fair single-head SSM of
spec section 2: the same config with one expert of width k * P) and ``llama``
(transformers' ``LlamaForCausalLM`` with SDPA attention, of about the same total parameters:
SmolLM2-135M's shape at ``base``; see :data:`LLAMA_SHAPES`).

The step is the trainer's own (``mossnet.bench.training``: loss with the router losses,
backward, clipping, AdamW; bf16 autocast on CUDA), eager and, on CUDA, replayed from a CUDA
graph (``--paths``). Per (model, size, length, path): tokens/s, step time, MFU (as in
``bench_model.py``), peak memory (CUDA: max allocated over warm-up and timed steps, so it
includes the optimizer state; CPU: peak RSS), the last loss, and with ``--launches`` the kernel
launches of one step (``mossnet.bench.launches``). A (model, size, length) runs in its own
process on CUDA (``--isolate``), every path of it in turn: a model that does not fit is
recorded with status "oom", a child that dies or runs out of time with "error" / "timeout".

Results: one JSON (``--out``, rewritten after every job, so a run cut short keeps its rows)
with the card, date, commit (``git``, else ``$MOSSNET_COMMIT``), software versions and the
execution policy; then a table and the flat-in-length check (``mossnet.bench.scaling``).

Usage:
    python benchmarks/bench_scaling.py --out scaling.json                  # a GPU, both sweeps
    python benchmarks/bench_scaling.py --sweeps length --launches --out length.json
    python benchmarks/bench_scaling.py --report a.json b.json --plot cost.png   # table, check, plot
    python benchmarks/bench_scaling.py --tiny --device cpu                 # seconds: CI smoke test
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
for entry in (HERE.parent / "src", HERE):  # the library, and bench_model beside this script
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import bench_model as bm  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mossnet import MossNetConfig, MossNetForCausalLM  # noqa: E402
from mossnet import isolated_jobs  # noqa: E402
from mossnet.bench import scaling  # noqa: E402
from mossnet.bench.launches import count_launches  # noqa: E402
from mossnet.bench.memory import peak_rss_mb, reset_peak_rss  # noqa: E402
from mossnet.bench.training import trainer_step  # noqa: E402
from mossnet.cli.argtypes import int_list, nonnegative_int, positive_float, positive_int  # noqa: E402
from mossnet.errors import MossNetError, OptionError, first_line  # noqa: E402
from mossnet.execution import ExecutionPolicy  # noqa: E402
from mossnet.models.parameter_count import parameter_counts  # noqa: E402
from mossnet.ops.mosse import resolve_impl  # noqa: E402
from mossnet.runtime import device_name, resolve_device  # noqa: E402

MODELS = ("mossnet", "llama", "ssm-1head")
SIZES = ("small", "base", "large")
PATHS = ("eager", "graph")
SWEEPS = ("length", "size")

# Llama of about the total parameters of the MossNet preset of the same name (tested on the meta
# device): ``base`` is SmolLM2-135M itself (bench_model's llama-135m); ``large`` is Llama-3.2-1B's
# shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192) with SmolLM2's vocabulary.
LLAMA_SHAPES: dict[str, dict] = {
    "small": dict(vocab_size=32768, hidden_size=512, num_hidden_layers=16, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, intermediate_size=1536),
    "base": {},
    "large": dict(vocab_size=49152, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=64, intermediate_size=8192),
}
# --tiny: a few layers each, growing with the size name (CPU smoke test).
TINY_LAYERS = {"small": 1, "base": 2, "large": 3}


def defaults(tiny: bool) -> dict:
    if tiny:
        return dict(lengths=[16, 32, 64], tokens_per_step=128, size_length=32, warmup=1, steps=1, matmul=128)
    return dict(lengths=[2048, 8192, 32768], tokens_per_step=32768, size_length=2048, warmup=3, steps=8,
                matmul=8192)


# ---------------------------------------------------------------------------- models


def mossnet_size_config(size: str, tiny: bool) -> MossNetConfig:
    """The MossNet preset ``size`` (``--tiny``: bench_model's tiny shape, ``TINY_LAYERS`` deep)."""
    if tiny:
        return bm.mossnet_config("small" if size == "small" else "base", True, n_layers=TINY_LAYERS[size])
    return MossNetConfig.from_preset(size)


def llama_size_config(size: str, tiny: bool, max_len: int) -> LlamaConfig:
    """Llama (SDPA) of about the MossNet preset's total parameters (:data:`LLAMA_SHAPES`)."""
    vocab = mossnet_size_config(size, tiny).vocab_size
    config = bm.llama_config(tiny, vocab, max_len)
    shape = {"num_hidden_layers": TINY_LAYERS[size]} if tiny else LLAMA_SHAPES[size]
    if not shape:
        return config
    merged = LlamaConfig.from_dict({**config.to_dict(), **shape})
    merged._attn_implementation = config._attn_implementation
    return merged


def model_config(model: str, size: str, tiny: bool, max_len: int):
    if model == "mossnet":
        return mossnet_size_config(size, tiny)
    if model == "ssm-1head":
        return bm.single_head_config(mossnet_size_config(size, tiny))
    if model == "llama":
        return llama_size_config(size, tiny, max_len)
    raise OptionError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")


def build_model(model: str, size: str, tiny: bool, device: torch.device, max_len: int):
    """A fresh fp32 model, its weights created on ``device`` directly (a 1B model initialised on
    the host first would take longer than its benchmark)."""
    config = model_config(model, size, tiny, max_len)
    torch.manual_seed(0)
    with torch.device(device):
        net = LlamaForCausalLM(config) if model == "llama" else MossNetForCausalLM(config)
    net.to(device)  # a no-op unless some tensor was made on an explicit other device
    if bm.is_mossnet(net):  # the ids are generated in range: no host read to check them
        net.execution_policy = net.execution_policy.replace(validate_token_ids=False)
    return net.train()


# ---------------------------------------------------------------------------- one job (a child process)


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's allocator error, or a library's own out-of-memory error (cuBLAS, Triton)."""
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, oom_type) or "out of memory" in str(err).lower()


def fixed_batch(vocab: int, batch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (B, T) and their next-token labels, in host memory like the trainer's."""
    rng = np.random.default_rng(seq_len)
    ids = rng.integers(0, vocab, size=(batch, seq_len + 1), dtype=np.int64)
    return ids[:, :-1].copy(), ids[:, 1:].copy()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_memory_peak(device: torch.device) -> None:
    if device.type == "cuda":
        bm.reset_peak(device)
    else:
        reset_peak_rss()


def memory_peak(device: torch.device) -> dict:
    """Peak memory since the last reset: CUDA's max allocated (and reserved), or on the CPU the
    process's peak resident memory (weights, interpreter and libraries included)."""
    if device.type == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30, "peak_mem_what": "cuda max allocated",
                "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30}
    return {"peak_mem_gb": peak_rss_mb() / 1024, "peak_mem_what": "peak RSS"}


def measure_path(model_name: str, size: str, seq_len: int, path: str, args, device, rate: float) -> dict:
    """Build the model, warm up, time ``args.steps`` trainer steps of ``path``; the numbers of
    one row. Raises what the work raises (out of memory included)."""
    batch = args.tokens_per_step // seq_len
    model = build_model(model_name, size, args.tiny, device, max_len=seq_len)
    counts = parameter_counts(model)
    ids, labels = fixed_batch(model.config.vocab_size, batch, seq_len)
    step = trainer_step(model, ids, labels, graphed=path == "graph")
    last = {}

    def run():
        last["stats"] = step()

    clock = bm.Clock(device)
    reset_memory_peak(device)
    # The graph step's first two calls are eager and the third captures: time replays only.
    for _ in range(max(args.warmup, 3) if path == "graph" else args.warmup):
        run()
    seconds = clock.span(run, args.steps)
    tokens_per_s = batch * seq_len * args.steps / seconds
    flops_per_token = 6 * counts["active"] + 3 * bm.mixing_flops_per_token(model, seq_len)
    row = {"params_total": counts["total"], "params_active": counts["active"],
           "step_ms": seconds / args.steps * 1e3, "tokens_per_s": tokens_per_s,
           "us_per_token": 1e6 / tokens_per_s, "flops_per_token": flops_per_token,
           "mfu": flops_per_token * tokens_per_s / rate, **memory_peak(device),
           "loss": last["stats"].loss, "loss_finite": last["stats"].finite}
    if bm.is_mossnet(model):
        row["execution_policy"] = model.execution_policy.as_dict()
        row["scan_impl"] = resolve_impl(model.execution_policy.scan_impl, torch.empty(0, device=device))
    else:
        row["attn_implementation"] = model.config._attn_implementation
    if args.launches:
        row["launches"] = count_launches(run, device, steps=1)
    return row


def measure_job(model_name: str, size: str, seq_len: int, args, device, rate: float, emit=None) -> list[dict]:
    """Every path of one (model, size, length), in this process; one row per path, each handed
    to ``emit`` as soon as it is measured. Out of memory gives a row with status "oom" (and the
    later paths, which need more memory, are skipped), any other failure status "error"."""
    rows = []
    out_of_memory = False
    for path in args.paths:
        row = job_head(model_name, size, seq_len, path, args)
        t0 = time.time()
        if out_of_memory:
            row.update(status="skipped", error="an earlier path ran out of memory")
        elif path == "graph" and device.type != "cuda":
            row.update(status="skipped", error="CUDA graphs need CUDA")
        else:
            try:
                row.update(measure_path(model_name, size, seq_len, path, args, device, rate), status="ok")
            except Exception as err:  # noqa: BLE001  (one failed measurement must not hide the others)
                out_of_memory = is_out_of_memory(err)
                row.update(status="oom" if out_of_memory else "error",
                           error=first_line(err)[:300] if out_of_memory else bm.reported_error(err, limit=300))
        row["job_s"] = round(time.time() - t0, 1)
        free_memory(device)
        rows.append(row)
        if emit is not None:
            emit(row)
    return rows


def job_head(model_name: str, size: str, seq_len: int, path: str, args) -> dict:
    return {"model": model_name, "size": size, "seq_len": seq_len, "batch": args.tokens_per_step // seq_len,
            "tokens_per_step": args.tokens_per_step, "path": path}


# ---------------------------------------------------------------------------- the parent


def job_command(job: tuple[str, str, int], args, rate: float) -> list[str]:
    """The child process that measures ``job``: this script with ``--job``."""
    model_name, size, seq_len = job
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", f"{model_name}:{size}:{seq_len}",
           "--device", args.device, "--paths", ",".join(args.paths), "--tokens-per-step", str(args.tokens_per_step),
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--matmul-rate", repr(rate)]
    return cmd + (["--tiny"] if args.tiny else []) + (["--launches"] if args.launches else [])


def run_job_isolated(job: tuple[str, str, int], args, rate: float, timeout: float) -> list[dict]:
    """``measure_job`` in a child process (``mossnet.isolated_jobs``: RESULT lines back, a
    timeout, the reason a child died). Paths it did not report get a row with status "timeout"
    or "error" and that reason."""
    result = isolated_jobs.run_job(job_command(job, args, rate), timeout=max(1.0, timeout))
    rows = isolated_jobs.read_results(result.stdout)
    done = {r["path"] for r in rows}
    missing = [p for p in args.paths if p not in done]
    if missing:
        sys.stderr.write(result.stderr[-4000:])
        reason = result.failure() or "ended without reporting this path"
        status = "timeout" if result.timeout is not None else ("oom" if "out of memory" in reason.lower() else "error")
        rows += [{**job_head(*job, p, args), "status": status, "error": reason[:300]} for p in missing]
    return rows


def jobs(args) -> list[tuple[str, str, int]]:
    """(model, size, length) of every sweep, in order, each once."""
    out = []
    if "length" in args.sweeps:
        out += [(m, args.length_size, T) for m in args.models for T in args.lengths]
    if "size" in args.sweeps:
        out += [(m, s, args.size_length) for m in args.models for s in args.sizes]
    return list(dict.fromkeys(out))


def git_commit() -> str | None:
    """``$MOSSNET_COMMIT`` (a machine given a copy of the tree without its ``.git``), else the
    checkout's HEAD."""
    from mossnet.studies.study import machine

    return os.environ.get("MOSSNET_COMMIT") or machine().get("commit")


def cpu_name() -> str:
    from types import SimpleNamespace

    from mossnet.bench.report import machine_info

    return machine_info(SimpleNamespace(threads=torch.get_num_threads()))["cpu"]


def environment(args, device: torch.device, argv: list[str]) -> dict:
    import transformers

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "card": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
           "device": str(device), "commit": git_commit(), "host": platform.node(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "tiny": args.tiny, "tokens_per_step": args.tokens_per_step, "warmup": args.warmup, "steps": args.steps,
           "paths": list(args.paths), "execution_policy": ExecutionPolicy.build().as_dict(),
           "scan_impl": resolve_impl("auto", torch.empty(0, device=device)),
           "command": " ".join(["bench_scaling.py", *argv])}
    if device.type == "cuda":
        env["card_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def sweeps(args) -> dict:
    out = {}
    if "length" in args.sweeps:
        out["length"] = {"size": args.length_size, "lengths": list(args.lengths)}
    if "size" in args.sweeps:
        out["size"] = {"seq_len": args.size_length, "sizes": list(args.sizes)}
    return out


def run(args, argv: list[str]) -> dict:
    """Every job of the sweeps (isolated or in this process), saving the JSON after each; then
    the flat check, the table and (``--plot``) the plot."""
    start = time.time()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as the trainer does
    results = {"env": environment(args, device, argv), "sweeps": sweeps(args), "rows": []}
    out_path = Path(args.out) if args.out else None

    def save():
        if out_path:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1, default=str))

    rate = bm.bench_matmul(device, args.matmul, bm.Clock(device))
    free_memory(device)  # the children need the card's memory, not this process's cache
    results["env"]["matmul_tflops"] = rate / 1e12
    print(f"matmul: {rate / 1e12:.1f} TFLOP/s; {results['env']['card']}; commit {results['env']['commit']}", flush=True)
    isolate = args.isolate if args.isolate is not None else device.type == "cuda"
    for job in jobs(args):
        left = start + args.hard_budget - time.time()
        if left < 30:
            rows = [{**job_head(*job, p, args), "status": "skipped", "error": "time budget"} for p in args.paths]
        elif isolate:
            rows = run_job_isolated(job, args, rate, timeout=min(args.job_timeout, left))
        else:
            rows = measure_job(*job, args, device, rate)
        results["rows"] += rows
        for r in rows:
            print(json.dumps({k: v for k, v in r.items() if k not in ("execution_policy", "launches")}, default=str),
                  flush=True)
        save()
    results["flat_check"] = scaling.flat_check(results, args.tolerance)
    results["env"]["wall_s"] = round(time.time() - start, 1)
    save()
    report(results, args.plot)
    return results


def report(results: dict, plot_path: str | None) -> None:
    print()
    print(scaling.markdown_table(results))
    print(f"rows by status: {scaling.rows_by_status(results)}", flush=True)
    if plot_path:
        scaling.plot_scaling(results, plot_path)
        print(f"plot: {plot_path}", flush=True)


def merge(paths: list[str]) -> dict:
    """Saved results of one or more runs (e.g. the length and the size sweep, run apart) as one:
    the first run's env, every row (a later run's row replaces an earlier one of the same model,
    size, length and path), and each sweep with the lengths or sizes of every run that swept at
    the same size or length as the first (a run of some lengths adds to the sweep)."""
    merged: dict = {"env": {}, "sweeps": {}, "rows": []}
    index: dict = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        merged["env"] = merged["env"] or data.get("env", {})
        merge_sweeps(merged["sweeps"], data.get("sweeps", {}))
        for r in data.get("rows", []):
            key = (r["model"], r["size"], r["seq_len"], r["path"])
            if key in index:
                merged["rows"][index[key]] = r
            else:
                index[key] = len(merged["rows"])
                merged["rows"].append(r)
    return merged


def merge_sweeps(into: dict, sweeps_of_run: dict) -> None:
    """Add one run's sweeps to ``into`` (see :func:`merge`)."""
    for name, sweep in sweeps_of_run.items():
        have = into.setdefault(name, {**sweep})
        if name == "length" and have["size"] == sweep["size"]:
            have["lengths"] = sorted(set(have["lengths"]) | set(sweep["lengths"]))
        elif name == "size" and have["seq_len"] == sweep["seq_len"]:
            have["sizes"] = have["sizes"] + [s for s in sweep["sizes"] if s not in have["sizes"]]


# ---------------------------------------------------------------------------- command line


def name_list(choices: tuple[str, ...]):
    """argparse type: comma-separated names, each one of ``choices``."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated names from {', '.join(choices)}, got {text!r}")
        return names
    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", type=device_name, default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    ap.add_argument("--tiny", action="store_true", help="tiny models and lengths (CPU smoke test, seconds)")
    ap.add_argument("--out", default=None, help="JSON results path (rewritten after every job)")
    ap.add_argument("--sweeps", type=name_list(SWEEPS), default=list(SWEEPS), help="length,size")
    ap.add_argument("--models", type=name_list(MODELS), default=list(MODELS), help="mossnet,llama,ssm-1head")
    ap.add_argument("--lengths", type=int_list, default=None, help="length sweep (default 2048,8192,32768)")
    ap.add_argument("--length-size", choices=SIZES, default="base", help="model size of the length sweep")
    ap.add_argument("--sizes", type=name_list(SIZES), default=list(SIZES), help="size sweep: small,base,large")
    ap.add_argument("--size-length", type=positive_int, default=None, help="sequence length of the size sweep (2048)")
    ap.add_argument("--tokens-per-step", type=positive_int, default=None, help="tokens per step, every length (32768)")
    ap.add_argument("--paths", type=name_list(PATHS), default=None,
                    help="eager,graph (graph: the CUDA-graph step; default both on CUDA, eager on the CPU)")
    ap.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed steps first (3; graph: at least 3)")
    ap.add_argument("--steps", type=positive_int, default=None, help="timed steps (8)")
    ap.add_argument("--launches", action="store_true", help="also count the kernel launches of one step")
    iso = ap.add_mutually_exclusive_group()
    iso.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                     help="one child process per (model, size, length) (the default on CUDA)")
    iso.add_argument("--no-isolate", dest="isolate", action="store_false", help="every job in this process")
    ap.add_argument("--job-timeout", type=positive_float, default=300.0, help="seconds per child process")
    ap.add_argument("--hard-budget", type=positive_float, default=1e9,
                    help="seconds after the start past which no job starts (running ones are cut to it)")
    ap.add_argument("--tolerance", type=positive_float, default=scaling.FLAT_TOLERANCE,
                    help="flat-in-length check: largest max/min - 1 of the per-token cost (0.15)")
    ap.add_argument("--plot", default=None, help="PNG of cost and memory against length and size (matplotlib)")
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="no measuring: merge saved results, print the table and the flat check (and --plot)")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--matmul-rate", type=positive_float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    fill = defaults(args.tiny)
    for key in ("lengths", "tokens_per_step", "size_length", "warmup", "steps"):
        if getattr(args, key) is None:
            setattr(args, key, fill[key])
    args.matmul = fill["matmul"]
    if args.paths is None:
        args.paths = list(PATHS) if args.device.startswith("cuda") or (
            args.device == "auto" and torch.cuda.is_available()) else ["eager"]
    lengths = list(args.lengths) * ("length" in args.sweeps) + [args.size_length] * ("size" in args.sweeps)
    bad = sorted({T for T in lengths if args.tokens_per_step % T})
    if bad:
        raise OptionError(f"--tokens-per-step {args.tokens_per_step} is not a multiple of the length(s) "
                          f"{', '.join(map(str, bad))}: every length must get the same tokens per step")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.report:
        results = merge(args.report)
        results["flat_check"] = scaling.flat_check(results, args.tolerance)
        report(results, args.plot)
        return results
    if args.job:
        model_name, size, seq_len = args.job.split(":")
        device = resolve_device(args.device)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        rate = args.matmul_rate or bm.bench_matmul(device, args.matmul, bm.Clock(device))
        measure_job(model_name, size, int(seq_len), args, device, rate, emit=isolated_jobs.emit_result)
        return {}
    return run(args, argv)


if __name__ == "__main__":
    try:
        main()
    except MossNetError as err:
        print(f"bench_scaling: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
