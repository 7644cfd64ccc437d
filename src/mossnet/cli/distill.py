"""``mossnet distill``: train a MossNet student to imitate a Transformer teacher.

    mossnet convert TEACHER --out runs/conv                                   # heads -> experts
    mossnet distill --teacher TEACHER --student runs/conv --data DATA --out runs/att --stage attention
    mossnet distill --teacher TEACHER --student runs/att --data DATA --out runs/kl --stage logits
    mossnet distill --resume runs/kl --max-steps 2000                         # continue exactly

It is ``mossnet train`` with a teacher: every trainer flag keeps its spelling and guarantees
(atomic checkpoints, exact resume, NaN stop, logs, bf16). The output is a run directory whose
``model/`` the next stage takes as ``--student``. The data must be prepared with the teacher's
tokenizer (``mossnet prepare-data --tokenizer TEACHER``). See docs/CONVERSION.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mossnet.cli import argtypes
    from mossnet.cli import train as train_cli

    train_cli.add_arguments(parser)
    g = parser.add_argument_group("distillation")
    g.add_argument("--teacher", default=None, metavar="PATH",
                   help="the teacher: a transformers Llama-family model directory, or a GGUF file")
    g.add_argument("--student", default=None, metavar="DIR", dest="init_from",
                   help="the student's starting weights (a `mossnet convert` or distill output; = --init-from)")
    g.add_argument("--stage", default=None, choices=("attention", "logits"),
                   help="attention: each MoSSE layer learns its teacher attention's output from the teacher's own "
                        "layer input (only the mixers train); logits: KL(teacher || student) on the next token")
    g.add_argument("--train", default=None, choices=("mixers", "all"), dest="train_params",
                   help="stage logits: what trains (default all)")
    g.add_argument("--ce-weight", type=argtypes.nonnegative_float, default=None,
                   help="stage logits: add this times the next-token cross-entropy (default 0)")
    g.add_argument("--temperature", type=argtypes.positive_float, default=None,
                   help="stage logits: softmax temperature of the KL (default 1)")


def run(args: argparse.Namespace) -> int:
    from mossnet.cli import train as train_cli
    from mossnet.errors import ConfigError
    from mossnet.distill.objective import make_objective, trainable_filter
    from mossnet.distill.teacher import check_data_tokenizer, load_teacher
    from mossnet.train.config import config_yaml
    from mossnet.train.loop import train
    from mossnet.runtime import resolve_device

    cfg = train_cli.resolve_config(args)
    given = {"teacher": args.teacher, "stage": args.stage, "train": args.train_params,
             "ce_weight": args.ce_weight, "temperature": args.temperature}
    settings = {"teacher": "", "stage": "", "train": "all", "ce_weight": 0.0, "temperature": 1.0, **cfg.distill,
                **{k: v for k, v in given.items() if v is not None}}
    if not settings["teacher"]:
        raise ConfigError("no teacher: pass --teacher PATH (a Llama-family model directory or a GGUF file)")
    if not settings["stage"]:
        raise ConfigError("no stage: pass --stage attention or --stage logits")
    if not cfg.resume and not cfg.init_from:
        raise ConfigError("no student: pass --student DIR (a `mossnet convert` output or an earlier stage's run)")
    settings["teacher"] = str(Path(settings["teacher"]).resolve())
    cfg.distill = settings
    explicit = args.warmup_steps is not None or "warmup_steps=" in " ".join(args.overrides or []) or args.config
    if not cfg.resume and not explicit:
        cfg.warmup_steps = min(cfg.warmup_steps, cfg.max_steps // 10)  # at most 10% of a (short) distillation
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    resolve_device(cfg.device)
    teacher, tokenizer = load_teacher(settings["teacher"], cfg.device)
    check_data_tokenizer(tokenizer, cfg.data, settings["teacher"])
    objective = make_objective(teacher, settings["stage"], settings["ce_weight"], settings["temperature"])
    result = train(cfg, loss_fn=objective, trainable=trainable_filter(settings["stage"], settings["train"]))
    return {"interrupted": 130, "terminated": 143}.get(result.status, 0)
