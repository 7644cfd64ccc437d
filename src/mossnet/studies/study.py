"""Drive one study from parsed ``mossnet compare`` arguments: specs -> runs -> report."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Callable

from . import report, report_paired
from .runner import read_json, run_pending, write_json
from .specs import RunSpec


def machine() -> dict[str, Any]:
    """``mossnet.runtime.machine_info`` plus the commit; ``cuda`` repeats the GPU's name, the key
    earlier study results use."""
    from mossnet.runtime import machine_info

    info = machine_info()
    info["cuda"] = info["gpu"]
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


def parse_model_overrides(items: list[str]) -> dict[str, Any]:
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


# Options whose default depends on the study (None on the command line = this table's value).
STUDY_DEFAULTS: dict[str, dict[str, Any]] = {
    "mqar": dict(widths=[32, 64], lrs=[1e-3, 3e-3, 1e-2], mqar_vocab=64, mqar_steps=1500, mqar_batch_size=16,
                 mqar_eval_examples=512, mqar_warmup=20, mqar_eval_points=0, seeds=1),
    "mqar_gate": dict(widths=[64], lrs=[3e-4, 1e-3, 3e-3], mqar_vocab=8192, mqar_steps=4000, mqar_batch_size=256,
                      mqar_eval_examples=1000, mqar_warmup=100, mqar_eval_points=20, seeds=1),
    # 6,000 steps: Zoology's attention left the plateau only after ~3,000 steps at lr 1e-2 (RESULTS.md).
    "mqar_rank": dict(widths=[64], lrs=[3e-3, 1e-2], mqar_vocab=8192, mqar_steps=6000, mqar_batch_size=256,
                      mqar_eval_examples=1000, mqar_warmup=100, mqar_eval_points=20, seeds=3),
    "lm": dict(seeds=2), "ablations": dict(seeds=2), "decomposition": dict(seeds=3),
}


def apply_study_defaults(args) -> None:
    """Fill the options left unset (None) with the study's defaults."""
    for key, value in STUDY_DEFAULTS.get(args.study, {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


Stage = Callable[[], list[RunSpec]]


def build_stages(args) -> list[Stage]:
    """The study's runs as stages: each is built (and run) after the ones before it have run, so
    that a later stage can depend on earlier results (the rate a learning-rate sweep picked)."""
    jobs, threads = _jobs_threads(args)
    cuda_graph = _check_cuda_graph(args)
    common = dict(device=args.device, dtype=args.dtype, threads=threads, cuda_graph=cuda_graph)
    if args.study == "mqar":
        from .arch_configs import ARCHS
        from .mqar import make_specs as mqar_specs

        return [lambda: mqar_specs(args.out, archs=args.archs or ARCHS, widths=args.widths, pairs=args.pairs,
                                   lrs=args.lrs, seq_len=args.mqar_seq_len, vocab_size=args.mqar_vocab,
                                   steps=args.mqar_steps, batch_size=args.mqar_batch_size, n_layers=args.mqar_layers,
                                   seeds=tuple(range(args.seeds)), eval_examples=args.mqar_eval_examples,
                                   warmup_steps=args.mqar_warmup, eval_points=args.mqar_eval_points,
                                   generator=getattr(args, "mqar_generator", "zoology"), **common)]
    if args.study in ("mqar_gate", "mqar_rank"):
        return _mqar_calibration_stages(args, common)
    if not args.data:
        raise ValueError(f"--study {args.study} needs --data DIR, a prepared corpus "
                         "(make one with `mossnet prepare-data --out DIR`)")
    if args.study == "decomposition":
        return _decomposition_stages(args, common)
    from .lm_study import make_specs as lm_specs

    return [lambda: lm_specs(args.study, args.out, args.data, preset=args.preset, archs=args.archs,
                               seeds=tuple(range(args.seeds)), budget_tokens=args.budget_tokens,
                               batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                               lr_sweep=getattr(args, "lr_sweep", ()), sweep_seeds=getattr(args, "sweep_seeds", 1),
                               warmup_frac=args.warmup_frac, eval_points=args.eval_points,
                               eval_tokens=args.eval_tokens, model_overrides=parse_model_overrides(args.model),
                               **common)]


def _decomposition_stages(args, common) -> list[Stage]:
    """The sweep (seed 0 of A, C, E at every rate), then every variant on every seed at the rate
    it inherits."""
    from mossnet.data import read_manifest

    from . import decomposition as dec
    from .arch_configs import reference_config
    from .lm_study import LMBudget

    letters = dec.check_letters(args.archs)
    ref_over = parse_model_overrides(args.model)
    ref = reference_config(args.preset, int(read_manifest(args.data)["vocab_size"]), ref_over)
    budget = LMBudget(data=str(args.data), preset=args.preset, budget_tokens=args.budget_tokens,
                      batch_size=args.batch_size, seq_len=args.seq_len, warmup_frac=args.warmup_frac,
                      eval_points=args.eval_points, eval_tokens=args.eval_tokens, probe_tokens=args.probe_tokens,
                      **common)
    lrs = list(dict.fromkeys([args.lr, *getattr(args, "lr_sweep", [])]))
    sweep = dec.sweep_specs(budget, args.out, ref, ref_over, letters, lrs)

    def main_stage() -> list[RunSpec]:
        rates = dec.best_rates(_finished(sweep))
        return dec.main_specs(budget, args.out, ref, ref_over, letters, tuple(range(args.seeds)), rates)

    return [lambda: sweep, main_stage]


def _mqar_calibration_stages(args, common) -> list[Stage]:
    from . import mqar_calibration as cal

    schedule = cal.MQARSchedule(steps=args.mqar_steps, batch_size=args.mqar_batch_size, vocab_size=args.mqar_vocab,
                                n_layers=args.mqar_layers, eval_examples=args.mqar_eval_examples,
                                warmup_steps=args.mqar_warmup, eval_points=args.mqar_eval_points, **common)
    seeds = tuple(range(args.seeds))
    if args.study == "mqar_gate":
        return [lambda: [s for d in args.widths for s in cal.gate_specs(args.out, schedule, d, args.lrs, seeds,
                                                                           args.archs)]]
    if not cal.mlp_free_supported():
        raise ValueError("--study mqar_rank needs MossNetConfig(mlp_experts=0) (no MLP), which this checkout "
                         "does not accept yet")
    archs = tuple(args.archs or cal.RANK_ARCHS)
    dims = tuple(args.state_dims)
    sweep = [s for d in args.widths for s in cal.rank_sweep_specs(args.out, schedule, archs, d, dims, args.lrs)]

    def main_stage() -> list[RunSpec]:
        rates = cal.rank_best_rates(_finished(sweep))
        return [s for d in args.widths for s in cal.rank_main_specs(args.out, schedule, rates, archs, d, dims, seeds)]

    return [lambda: sweep, main_stage]


def _finished(specs: list[RunSpec]) -> list[dict[str, Any]]:
    return [read_json(s.result) for s in specs if Path(s.result).is_file()]


def write_report(study: str, out: Path, specs: list[RunSpec], settings: dict[str, Any]) -> str:
    results = _finished(specs)
    if not results:
        return "no finished runs yet"
    table, note, png = _study_report(study, out, results, settings)
    text = [f"# mossnet compare --study {study}", "",
            f"command: `mossnet {' '.join(settings['argv'])}`", "",
            f"started {settings['started']} on {settings['machine']['platform']} "
            f"({settings['machine']['cpu_count']} CPU cores, GPU: {settings['machine']['cuda'] or 'none'}, "
            f"torch {settings['machine']['torch']}, commit {settings['machine'].get('commit') or 'unknown'}), "
            f"{len(results)} of {len(specs)} runs finished", "", table, ""]
    if png:
        text.append(note or f"![{study}]({png})")
    (out / "results.md").write_text("\n".join(text) + "\n")
    write_json(out / "summary.json", {"settings": settings, "results": results})
    return table


def _study_report(study: str, out: Path, results: list[dict[str, Any]], settings) -> tuple[str, str | None, str]:
    """(the Markdown tables, a note in place of the plot or None, the plot's file name or "")."""
    if study == "mqar":
        return report.mqar_table(results), report.plot_mqar(results, out / "mqar.png"), "mqar.png"
    if study == "mqar_gate":
        from .mqar_calibration import gate_verdict

        return report_paired.gate_table(gate_verdict(results)), None, ""
    if study == "mqar_rank":
        note = report_paired.plot_rank(results, out / "mqar_rank.png")
        return report_paired.rank_report(results), note, "mqar_rank.png"
    if study == "decomposition":
        note = report.plot_lm(report_paired.decomposition_main_runs(results) or results, out / "decomposition.png",
                              title=f"decomposition: validation loss, {results[0]['tokens']:,} tokens per run")
        return report_paired.decomposition_report(results), note, "decomposition.png"
    # the main table and plot: every model at the shared learning rate; a sweep gets its own table
    reference_lr = settings["args"].get("lr")
    shared = [r for r in results if reference_lr is None or r["lr"] == reference_lr]
    table = report.lm_table(shared) if shared else "no finished run at the shared learning rate yet"
    paired = report_paired.paired_table(shared, "mossnet" if study == "lm" else "reference")
    sweep = report.lm_sweep_table(results, reference_lr) if reference_lr is not None else ""
    table += "".join("\n\n" + part for part in (paired, sweep) if part)
    note = report.plot_lm(shared or results, out / f"{study}.png",
                          title=f"{study}: validation loss, {results[0]['tokens']:,} training tokens per run")
    return table, note, f"{study}.png"


def run_study(args, argv: list[str]) -> int:
    import datetime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    apply_study_defaults(args)
    stages = build_stages(args)
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
    specs: list[RunSpec] = []
    jobs, _ = _jobs_threads(args)
    for stage in stages:
        new = [s for s in stage() if s.name not in {x.name for x in specs}]
        specs += new
        if not args.report_only:
            failed += run_pending(new, jobs=jobs)
    table = write_report(args.study, out, specs, settings)
    print(table)
    print(f"\nreport: {out / 'results.md'}")
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)} (run the same command again to retry them)")
        return 1
    return 0
