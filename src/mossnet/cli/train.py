"""``mossnet train``: train MossNet (or a size-matched Llama / Mamba-2 baseline) on a prepared corpus.

    mossnet train --preset tiny --data runs/demo/data --out runs/demo/model --max-steps 600
    mossnet train --config run.yaml lr=1e-3 model.n_layers=6        # YAML + key=value overrides
    mossnet train --resume runs/demo/model --max-steps 1200         # continue exactly
    mossnet train ... --print-config                                # show the resolved options, exit
    mossnet train --arch llama --preset tiny --data ... --out ...   # the same pipeline, a baseline
    torchrun --nproc_per_node 4 -m mossnet.cli.main train ... [--fsdp]
"""

from __future__ import annotations

import argparse
import sys


ACCEPTS_OVERRIDES = True  # KEY=VALUE words anywhere on the command line (cli/main.py collects them)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mossnet.cli import argtypes as t

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Any option of the training config can be set as KEY=VALUE (e.g. lr=3e-4 warmup_steps=200),\n"
        "and any model-config field as model.FIELD=VALUE (e.g. model.ssm_experts=8), anywhere on the line.\n"
        "Priority: preset < checkpoint (with --resume) < --config YAML < flags < KEY=VALUE.\n"
        "Output: OUT/model (loadable with from_pretrained), OUT/trainer (resume state), OUT/logs.\n"
        "Multi-GPU: torchrun --nproc_per_node N -m mossnet.cli.main train ... (DDP; --fsdp for FSDP2).")
    g = parser.add_argument_group("what and where")
    g.add_argument("--preset", default=None, help="model size: tiny | small | base (default tiny)")
    g.add_argument("--arch", default=None, choices=["mossnet", "llama", "mamba2"],
                   help="mossnet (default), or a size-matched transformers baseline")
    g.add_argument("--data", default=None, help="a directory written by `mossnet prepare-data`")
    g.add_argument("--out", default=None,
                   help="run directory: new or empty, or this run's own when resuming (OUT/model is the model)")
    g.add_argument("--config", default=None, metavar="FILE.yaml", help="training options from a YAML file")
    g.add_argument("--resume", default=None, metavar="DIR", help="continue exactly from this run directory "
                   "(default --out: DIR)")
    g.add_argument("--init-from", default=None, metavar="DIR", dest="init_from",
                   help="start from this model's weights (a run directory, its model/, or a `mossnet convert` "
                        "output) with a fresh optimizer and schedule; only shape-keeping model.* overrides apply")
    g.add_argument("--force", action="store_const", const=True, default=None,
                   help="write into a non-empty --out that is not this run's, or over another run "
                        "(MossNet still writes only OUT/model, OUT/trainer, OUT/logs)")
    g.add_argument("--allow-change", action="store_const", const=True, default=None, dest="allow_change",
                   help="resume although the data, --seq-len or --preset differ from the checkpoint's (printed)")
    g.add_argument("--print-config", action="store_true", help="print the resolved training configuration and exit")
    g = parser.add_argument_group("schedule and batch")
    g.add_argument("--max-steps", type=t.positive_int, default=None, help="total optimizer steps")
    g.add_argument("--batch-size", type=t.positive_int, default=None, help="micro-batch size per process")
    g.add_argument("--seq-len", type=t.positive_int, default=None, help="tokens per training sequence")
    g.add_argument("--grad-accum", type=t.positive_int, default=None, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=t.positive_float, default=None, help="peak learning rate")
    g.add_argument("--warmup-steps", type=t.nonnegative_int, default=None,
                   help="steps of linear learning-rate warm-up before the cosine decay")
    g.add_argument("--weight-decay", type=t.nonnegative_float, default=None,
                   help="AdamW weight decay (not applied to norms, biases, A_log, D, dt bias)")
    g.add_argument("--grad-clip", type=t.nonnegative_float, default=None,
                   help="clip the global gradient norm to this value (0 = no clipping)")
    g.add_argument("--seed", type=t.seed, default=None, help="random seed (model init, data order, sampling)")
    g = parser.add_argument_group("logging and checkpoints")
    g.add_argument("--log-interval", type=t.nonnegative_int, default=None, help="steps between log records")
    g.add_argument("--eval-interval", type=t.nonnegative_int, default=None,
                   help="steps between validation runs (0 = only at the end)")
    g.add_argument("--eval-tokens", type=t.nonnegative_int, default=None,
                   help="validation tokens per periodic run (0 = the whole split; otherwise more than --seq-len)")
    g.add_argument("--ckpt-interval", type=t.nonnegative_int, default=None,
                   help="steps between checkpoints (0 = only at the end)")
    g.add_argument("--no-progress", action="store_const", const=False, dest="progress", default=None,
                   help="no tqdm progress bar")
    g.add_argument("--no-tensorboard", action="store_const", const=False, dest="tensorboard", default=None,
                   help="do not write TensorBoard logs (OUT/logs/tensorboard)")
    g = parser.add_argument_group("execution")
    g.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_const", const=True, default=None, help="torch.compile the model")
    g.add_argument("--cuda-graph", action="store_const", const=True, default=None, dest="cuda_graph",
                   help="capture the whole training step in a CUDA graph and replay it (one CUDA process; "
                        "removes the per-kernel launch cost)")
    g.add_argument("--no-cuda-graph", action="store_const", const=False, dest="cuda_graph",
                   help="train eagerly (overrides a YAML or checkpoint setting)")
    g.add_argument("--fsdp", action="store_const", const=True, default=None,
                   help="FSDP2 (fully_shard) instead of DDP under torchrun")
    g.add_argument("--num-threads", type=t.nonnegative_int, default=None, help="torch CPU threads (0 = torch's default)")
    parser.set_defaults(overrides=[])


FLAG_KEYS = ("preset", "arch", "data", "out", "resume", "init_from", "force", "allow_change", "max_steps", "batch_size",
             "seq_len", "grad_accum", "lr", "warmup_steps", "weight_decay", "grad_clip", "seed", "log_interval",
             "eval_interval", "eval_tokens", "ckpt_interval", "progress", "tensorboard", "device", "dtype",
             "compile", "cuda_graph", "fsdp", "num_threads")


def resolve_config(args: argparse.Namespace):
    from mossnet.train.config import build_config, load_yaml, parse_overrides

    flags = {k: getattr(args, k, None) for k in FLAG_KEYS}
    # --resume may also come from the YAML file or an override
    resume = flags["resume"] or parse_overrides(args.overrides or []).get("resume")
    if not resume and args.config:
        resume = load_yaml(args.config).get("resume")
    saved = None
    if resume:
        saved = _saved_config(resume)
        saved.pop("resume", None)
        saved.pop("init_from", None)  # provenance of the original run; the weights now come from the checkpoint
        if flags["out"] is None:
            flags["out"] = resume  # continue in place
        flags["resume"] = resume
    return build_config(preset=None, saved=saved, yaml_path=args.config, flags=flags, overrides=args.overrides)


def _saved_config(path: str) -> dict:
    from pathlib import Path

    import yaml

    from mossnet.train.checkpoint import CONFIG_FILE, read_trainer_state
    from mossnet.errors import CheckpointError
    from mossnet.rundir import TRAINER

    read_trainer_state(path, verify=False)  # a clear line for a missing, old-layout or unfinished checkpoint
    f = Path(path) / TRAINER / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{path} is not a training checkpoint ({TRAINER}/{CONFIG_FILE} is missing)")
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError as err:
        raise CheckpointError(f"{f} is corrupt: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{f} is corrupt (not a mapping)")
    return data


def run(args: argparse.Namespace) -> int:
    from mossnet.train.config import config_yaml
    from mossnet.train.loop import train

    cfg = resolve_config(args)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    result = train(cfg)
    return {"interrupted": 130, "terminated": 143}.get(result.status, 0)
