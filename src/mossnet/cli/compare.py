"""``mossnet compare``: equal-budget quality studies against Transformer and SSM baselines.

    mossnet compare --study lm --data runs/data --budget-tokens 2e6 --seeds 2 --out runs/cmp-lm
    mossnet compare --study mqar --out runs/cmp-mqar
    mossnet compare --study ablations --data runs/data --budget-tokens 2e6 --out runs/cmp-abl
    mossnet compare --study decomposition --data runs/data --seq-len 1024 --lr-sweep 1e-3,1e-2 --out runs/dec
    mossnet compare --study mqar_gate --out runs/gate        # Zoology's attention, then the ladder
    mossnet compare --study mqar_rank --out runs/rank        # only once the gate passes

Every run writes one result JSON; running the same command again skips the finished runs (and
resumes an interrupted language-model run from its last checkpoint), then rewrites the report:
``OUT/results.md`` (the table), ``OUT/<study>.png`` (the plot) and ``OUT/summary.json``.
GPU or CPU is chosen automatically (bf16 autocast on CUDA). See docs/STUDIES.md.
"""

from __future__ import annotations

import argparse
import sys

from mossnet.cli.argtypes import fraction, nonnegative_int, positive_float, positive_int
from mossnet.runtime import AUTOCAST_DTYPES, device_name

STUDIES = ("lm", "mqar", "ablations", "decomposition", "mqar_gate", "mqar_rank")


def _csv(kind):
    """argparse type: a comma-separated list of ``kind`` values (each range-checked by ``kind``)."""
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [kind(x) for x in items]
    return parse


def _count(text: str) -> int:
    """A positive integer, also written as a float (``2e6``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, choices=STUDIES, help="which study to run")
    parser.add_argument("--out", required=True, help="study directory (runs, results.md, plot)")
    parser.add_argument("--seeds", type=_count, default=None,
                        help="seeds 0..N-1 (default: 2 for lm/ablations, 1 for mqar and mqar_gate, 3 for "
                             "decomposition and mqar_rank)")
    parser.add_argument("--archs", type=_csv(str), default=None,
                        help="comma-separated subset: architectures (lm, mqar: mossnet,single_head,single_head_moe,"
                             "llama,mamba2), ablation names (ablations), variants A-H (decomposition), ladder rungs "
                             "(mqar_gate) or single_head,dense_2_heads,mossnet (mqar_rank)")
    parser.add_argument("--jobs", type=nonnegative_int, default=0,
                        help="runs in parallel (default: 1 on a GPU, one per CPU core otherwise)")
    parser.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", choices=AUTOCAST_DTYPES,
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from existing results")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it holds other files, or overlaps --data (nothing there "
                             "is deleted; the study writes only its own files)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay each run's training step from a CUDA graph (CUDA only; not for mamba2, whose "
                             "kernel-less path is not capturable): several times faster for these small, "
                             "launch-bound models. The numbers answer the same question; it is tested equal to "
                             "the eager step")
    lm = parser.add_argument_group("lm, ablations and decomposition")
    lm.add_argument("--data", help="a prepared corpus (`mossnet prepare-data --out DIR`)")
    lm.add_argument("--budget-tokens", type=_count, default=163_840, help="training tokens per run")
    lm.add_argument("--preset", default="tiny", help="the reference MossNet preset (default tiny)")
    lm.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the reference MossNet config (e.g. d_model=96 n_layers=3)")
    lm.add_argument("--batch-size", type=positive_int, default=8, help="sequences per training step (default 8)")
    lm.add_argument("--seq-len", type=positive_int, default=128, help="tokens per training sequence (default 128)")
    lm.add_argument("--lr", type=positive_float, default=3e-3,
                    help="the learning rate every model shares (the main, equal-settings table; decomposition: "
                         "one rate of the sweep)")
    lm.add_argument("--lr-sweep", type=_csv(positive_float), default=[],
                    help="other learning rates to try per model, on the first --sweep-seeds seeds: the report "
                         "adds a sweep table and each model's best learning rate (decomposition: the sweep of "
                         "A, C and E on seed 0; the others inherit)")
    lm.add_argument("--sweep-seeds", type=_count, default=1, help="seeds of the --lr-sweep runs (default 1)")
    lm.add_argument("--warmup-frac", type=fraction, default=0.05, help="warmup steps as a fraction of the run")
    lm.add_argument("--eval-points", type=positive_int, default=5, help="validation points on the curve")
    lm.add_argument("--eval-tokens", type=positive_int, default=8192,
                    help="validation tokens per intermediate point (the final point uses the whole split)")
    lm.add_argument("--probe-tokens", type=positive_int, default=65536,
                    help="decomposition: validation tokens of the recall-token, repeated-passage and router "
                         "probes (default 65536)")
    mq = parser.add_argument_group("mqar, mqar_gate and mqar_rank (defaults per study: mqar / gate / rank)")
    mq.add_argument("--widths", type=_csv(_count), default=None, help="d_model values (32,64 / 64 / 64)")
    mq.add_argument("--pairs", type=_csv(_count), default=[4, 8, 16], help="mqar: numbers of key-value pairs")
    mq.add_argument("--lrs", type=_csv(positive_float), default=None,
                    help="learning rates (1e-3,3e-3,1e-2 / 3e-4,1e-3,3e-3 / 3e-3,1e-2): mqar and the gate report "
                         "each cell's best; mqar_rank sweeps them on seed 0 and runs the other seeds at the best")
    mq.add_argument("--state-dims", type=_csv(_count), default=[16, 64],
                    help="mqar_rank: MossNet's state dim n of each state size (single and dense heads get 2n, so "
                         "that E*P*N matches; default 16,64)")
    mq.add_argument("--mqar-generator", choices=("zoology", "uniform"), default="zoology",
                    help="mqar: zoology (values without replacement, power-law query gaps, random filler) or "
                         "uniform (the generator of the earlier grids)")
    mq.add_argument("--mqar-seq-len", type=positive_int, default=64, help="mqar: tokens per example (default 64)")
    mq.add_argument("--mqar-vocab", type=positive_int, default=None, help="vocabulary size (64 / 8192 / 8192)")
    mq.add_argument("--mqar-steps", type=positive_int, default=None,
                    help="training steps per run (1500 / 4000 / 3000; at CPU scale, 1,500 are too few to learn the "
                         "bindings; see RESULTS.md)")
    mq.add_argument("--mqar-batch-size", type=positive_int, default=None,
                    help="examples per training step (16 / 256 / 256)")
    mq.add_argument("--mqar-layers", type=positive_int, default=2, help="layers of every MQAR model (default 2)")
    mq.add_argument("--mqar-eval-examples", type=positive_int, default=None,
                    help="held-out examples per slice scored at the end of each run (512 / 1000 / 1000)")
    mq.add_argument("--mqar-warmup", type=nonnegative_int, default=None,
                    help="linear warmup steps before the cosine decay (20 / 100 / 100)")
    mq.add_argument("--mqar-eval-points", type=nonnegative_int, default=None,
                    help="also score 256 held-out examples per slice at this many evenly spaced points of each "
                         "run: an accuracy curve and the examples needed to reach 0.9 (0 / 20 / 20; 0: final "
                         "score only; the gate stops a run once its 128x8 slice reaches 0.99)")


def run(args: argparse.Namespace) -> int:
    from mossnet.errors import OptionError
    from mossnet.studies.study import run_study

    _check(args)
    try:
        return run_study(args, argv=sys.argv[1:])
    except ValueError as err:  # a study setting the specs refuse (e.g. warmup longer than the run)
        raise OptionError(str(err)) from None


def _check(args: argparse.Namespace) -> None:
    """Everything that can be refused before a run starts or --out is written."""
    from pathlib import Path

    from mossnet.errors import ConfigError, DataError, OptionError
    from mossnet.rundir.ownership import claim_output_dir

    if args.archs:
        known = _known_archs(args.study)
        unknown = [a for a in args.archs if a not in known]
        if unknown:
            kind = {"ablations": "ablation", "decomposition": "variant", "mqar_gate": "rung"}.get(args.study,
                                                                                                   "architecture")
            raise OptionError(f"--archs: unknown {kind} "
                              f"{', '.join(map(repr, unknown))} for --study {args.study}; choose from {', '.join(known)}")
    if args.study not in ("mqar", "mqar_gate", "mqar_rank") and not args.report_only:
        if not args.data:
            raise OptionError(f"--study {args.study} needs --data DIR, a prepared corpus "
                              "(make one with `mossnet prepare-data --out DIR`)")
        from mossnet.data import read_manifest

        if not Path(args.data).is_dir():
            raise DataError(f"--data {args.data} does not exist or is not a directory")
        read_manifest(args.data)
        from mossnet.models.mossnet.configuration_mossnet import PRESETS

        if args.preset not in PRESETS:
            raise ConfigError(f"--preset {args.preset!r} is not a preset; choose one of {', '.join(sorted(PRESETS))}")
    if not args.report_only:
        from mossnet import runtime

        runtime.resolve_device(args.device)
    claim_output_dir(args.out, option="--out", force=args.force, owned=_is_study_dir, reuse_owned=True,
                     reserved=("study.json", "results.md", "summary.json", "runs"),
                     read_dirs={"data": args.data})


def _known_archs(study: str) -> tuple[str, ...]:
    if study == "ablations":
        from mossnet.studies.lm_study import ABLATIONS

        return tuple(ABLATIONS)
    if study == "decomposition":
        from mossnet.studies.decomposition import LETTERS

        return LETTERS
    if study == "mqar_gate":
        from mossnet.studies.mqar_calibration import ladder

        return tuple(r.name for r in ladder(128))  # every rung name (the heads rung exists above d=64)
    if study == "mqar_rank":
        from mossnet.studies.mqar_calibration import RANK_ARCHS

        return RANK_ARCHS
    from mossnet.studies.arch_configs import ARCHS

    return ARCHS


def _is_study_dir(path) -> bool:
    return (path / "study.json").is_file()
