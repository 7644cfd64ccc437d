"""``mossnet compare``: equal-budget quality studies against Transformer and SSM baselines.

    mossnet compare --study lm --data runs/data --budget-tokens 2e6 --seeds 2 --out runs/cmp-lm
    mossnet compare --study mqar --out runs/cmp-mqar
    mossnet compare --study ablations --data runs/data --budget-tokens 2e6 --out runs/cmp-abl

Every run writes one result JSON; running the same command again skips the finished runs (and
resumes an interrupted language-model run from its last checkpoint), then rewrites the report:
``OUT/results.md`` (the table), ``OUT/<study>.png`` (the plot) and ``OUT/summary.json``.
GPU or CPU is chosen automatically (bf16 autocast on CUDA). See docs/STUDIES.md.
"""

from __future__ import annotations

import argparse
import sys

STUDIES = ("lm", "mqar", "ablations")


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(float(x)) if kind is int else kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def _count(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, choices=STUDIES, help="which study to run")
    parser.add_argument("--out", required=True, help="study directory (runs, results.md, plot)")
    parser.add_argument("--seeds", type=_count, default=None,
                        help="seeds 0..N-1 (default: 2 for lm/ablations, 1 for mqar, whose lr sweep repeats each cell)")
    parser.add_argument("--archs", type=_csv(str), default=None,
                        help="comma-separated subset: architectures (lm, mqar: mossnet,single_head,moe_mamba,llama,"
                             "mamba2) or ablation names (ablations)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="runs in parallel (default: 1 on a GPU, one per CPU core otherwise)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from existing results")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay each run's training step from a CUDA graph (CUDA only; not for mamba2, whose "
                             "kernel-less path is not capturable): several times faster for these small, "
                             "launch-bound models. The numbers answer the same question; it is tested equal to "
                             "the eager step")
    lm = parser.add_argument_group("lm and ablations")
    lm.add_argument("--data", help="a prepared corpus (`mossnet prepare-data --out DIR`)")
    lm.add_argument("--budget-tokens", type=_count, default=163_840, help="training tokens per run")
    lm.add_argument("--preset", default="tiny", help="the reference MossNet preset (default tiny)")
    lm.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the reference MossNet config (e.g. d_model=96 n_layers=3)")
    lm.add_argument("--batch-size", type=int, default=8)
    lm.add_argument("--seq-len", type=int, default=128)
    lm.add_argument("--lr", type=float, default=3e-3,
                    help="the learning rate every model shares (the main, equal-settings table)")
    lm.add_argument("--lr-sweep", type=_csv(float), default=[],
                    help="other learning rates to try per model, on the first --sweep-seeds seeds: the report "
                         "adds a sweep table and each model's best learning rate")
    lm.add_argument("--sweep-seeds", type=_count, default=1, help="seeds of the --lr-sweep runs (default 1)")
    lm.add_argument("--warmup-frac", type=float, default=0.05, help="warmup steps as a fraction of the run")
    lm.add_argument("--eval-points", type=int, default=5, help="validation points on the curve")
    lm.add_argument("--eval-tokens", type=int, default=8192,
                    help="validation tokens per intermediate point (the final point uses the whole split)")
    mq = parser.add_argument_group("mqar")
    mq.add_argument("--widths", type=_csv(int), default=[32, 64], help="d_model values")
    mq.add_argument("--pairs", type=_csv(int), default=[4, 8, 16], help="numbers of key-value pairs")
    mq.add_argument("--lrs", type=_csv(float), default=[1e-3, 3e-3, 1e-2],
                    help="learning rates (best one per cell; attention needs the low end, the SSMs the high one)")
    mq.add_argument("--mqar-seq-len", type=int, default=64)
    mq.add_argument("--mqar-vocab", type=int, default=64)
    mq.add_argument("--mqar-steps", type=int, default=1500,
                    help="training steps per run (at CPU scale, 1,500 are too few to learn the bindings; see RESULTS.md)")
    mq.add_argument("--mqar-batch-size", type=int, default=16)
    mq.add_argument("--mqar-layers", type=int, default=2)
    mq.add_argument("--mqar-eval-examples", type=int, default=512)
    mq.add_argument("--mqar-warmup", type=int, default=20,
                    help="linear warmup steps before the cosine decay (default 20)")
    mq.add_argument("--mqar-eval-points", type=int, default=0,
                    help="also score 256 held-out examples at this many evenly spaced points of each run: "
                         "an accuracy curve and the examples needed to reach 0.9 (default 0: final score only)")


def run(args: argparse.Namespace) -> int:
    from mossnet.studies.study import run_study

    try:
        return run_study(args, argv=sys.argv[1:])
    except ValueError as err:
        print(f"mossnet compare: error: {err}", file=sys.stderr)
        return 2
