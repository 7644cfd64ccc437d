"""Drive one study from parsed ``mossnet compare`` arguments: specs -> runs -> report."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

from . import report
from .runner import read_json, run_pending, write_json


def machine() -> dict[str, Any]:
    import torch

    info = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    info["commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    """The repository's HEAD (with "+dirty" when the tree has changes), if this is a checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _parse_model(items: list[str]) -> dict[str, Any]:
    from mossnet.train.config import parse_model_value

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_model_value(v)
    return out


def _jobs_threads(args) -> tuple[int, int]:
    from .common import default_jobs

    jobs = args.jobs or default_jobs(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    return jobs, threads


def _check_cuda_graph(args) -> bool:
    """``--cuda-graph`` asks for CUDA: say so now rather than in every run's log (a report
    rebuilt with ``--report-only`` runs nothing, so it may be rebuilt anywhere)."""
    if not getattr(args, "cuda_graph", False):
        return False
    if getattr(args, "report_only", False):
        return True
    from mossnet.runtime import resolve_device

    if resolve_device(args.device).type != "cuda":
        raise ValueError("--cuda-graph needs a CUDA device (this study would run on the CPU)")
    return True


def build_specs(args) -> list[dict[str, Any]]:
    jobs, threads = _jobs_threads(args)
    cuda_graph = _check_cuda_graph(args)
    if args.study == "mqar":
        from .arch_configs import ARCHS
        from .mqar import make_specs

        return make_specs(args.out, archs=args.archs or ARCHS, widths=args.widths, pairs=args.pairs, lrs=args.lrs,
                          seq_len=args.mqar_seq_len, vocab_size=args.mqar_vocab, steps=args.mqar_steps,
                          batch_size=args.mqar_batch_size, n_layers=args.mqar_layers,
                          seeds=tuple(range(args.seeds)), eval_examples=args.mqar_eval_examples,
                          warmup_steps=getattr(args, "mqar_warmup", 20),
                          eval_points=getattr(args, "mqar_eval_points", 0), device=args.device, dtype=args.dtype, threads=threads,
                          cuda_graph=cuda_graph)
    if not args.data:
        raise ValueError(f"--study {args.study} needs --data DIR, a prepared corpus "
                         "(make one with `mossnet prepare-data --out DIR`)")
    from .lm_study import make_specs

    return make_specs(args.study, args.out, args.data, preset=args.preset, archs=args.archs,
                      seeds=tuple(range(args.seeds)), budget_tokens=args.budget_tokens, batch_size=args.batch_size,
                      seq_len=args.seq_len, lr=args.lr, lr_sweep=getattr(args, "lr_sweep", ()),
                      sweep_seeds=getattr(args, "sweep_seeds", 1), warmup_frac=args.warmup_frac,
                      eval_points=args.eval_points, eval_tokens=args.eval_tokens, model_overrides=_parse_model(args.model),
                      device=args.device, dtype=args.dtype, threads=threads, cuda_graph=cuda_graph)


def write_report(study: str, out: Path, specs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    results = [read_json(s["result"]) for s in specs if Path(s["result"]).is_file()]
    if not results:
        return "no finished runs yet"
    if study == "mqar":
        table = report.mqar_table(results)
        note = report.plot_mqar(results, out / "mqar.png")
        png = "mqar.png"
    else:
        # the main table and plot: every model at the shared learning rate; a sweep gets its own table
        reference_lr = settings["args"].get("lr")
        shared = [r for r in results if reference_lr is None or r["lr"] == reference_lr]
        table = report.lm_table(shared) if shared else "no finished run at the shared learning rate yet"
        sweep = report.lm_sweep_table(results, reference_lr) if reference_lr is not None else ""
        if sweep:
            table += "\n\n" + sweep
        budget = results[0]["tokens"]
        note = report.plot_lm(shared or results, out / f"{study}.png",
                              title=f"{study}: validation loss, {budget:,} training tokens per run")
        png = f"{study}.png"
    text = [f"# mossnet compare --study {study}", "",
            f"command: `mossnet {' '.join(settings['argv'])}`", "",
            f"started {settings['started']} on {settings['machine']['platform']} "
            f"({settings['machine']['cpu_count']} CPU cores, GPU: {settings['machine']['cuda'] or 'none'}, "
            f"torch {settings['machine']['torch']}, commit {settings['machine'].get('commit') or 'unknown'}), "
            f"{len(results)} of {len(specs)} runs finished", "", table, ""]
    text.append(note or f"![{study}]({png})")
    (out / "results.md").write_text("\n".join(text) + "\n")
    write_json(out / "summary.json", {"settings": settings, "results": results})
    return table


def run_study(args, argv: list[str]) -> int:
    import datetime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.seeds is None:
        args.seeds = 1 if args.study == "mqar" else 2
    specs = build_specs(args)
    settings_path = out / "study.json"
    settings = read_json(settings_path) if settings_path.is_file() else {}
    if not settings or not args.report_only:
        jobs, threads = _jobs_threads(args)
        settings = {"argv": argv, "started": settings.get("started") or
                    datetime.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "machine": machine(), "jobs": jobs, "threads_per_run": threads,
                    "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
        write_json(settings_path, settings)
    failed: list[str] = []
    if not args.report_only:
        jobs, _ = _jobs_threads(args)
        failed = run_pending(specs, jobs=jobs)
    table = write_report(args.study, out, specs, settings)
    print(table)
    print(f"\nreport: {out / 'results.md'}")
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)} (run the same command again to retry them)")
        return 1
    return 0
