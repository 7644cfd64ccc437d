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


ACCEPTS_OVERRIDES = True  # KEY=VALUE words anywhere on the command line (cli/main.py collects them)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags come from TrainConfig's fields (``train/config.py``: ``option(...)``), so a new
    training option is declared once; their spellings are a contract and never change."""
    from mossnet.cli import argtypes
    from mossnet.train.config import FLAG_FIELDS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Any option of the training config can be set as KEY=VALUE (e.g. lr=3e-4 warmup_steps=200),\n"
        "and any model-config field as model.FIELD=VALUE (e.g. model.ssm_experts=8), anywhere on the line.\n"
        "Priority: preset < checkpoint (with --resume) < --config YAML < flags < KEY=VALUE.\n"
        "Output: OUT/model (loadable with from_pretrained), OUT/trainer (resume state), OUT/logs.\n"
        "Multi-GPU: torchrun --nproc_per_node N -m mossnet.cli.main train ... (DDP; --fsdp for FSDP2).")
    groups = {}
    for f in FLAG_FIELDS:
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool") and f.default is True:
            group.add_argument("--no-" + flag[2:], action="store_const", const=False, dest=f.name, default=None,
                               help=meta["help"])
        elif f.type in (bool, "bool"):
            group.add_argument(flag, action="store_const", const=True, dest=f.name, default=None, help=meta["help"])
            if meta["both"]:
                group.add_argument("--no-" + flag[2:], action="store_const", const=False, dest=f.name,
                                   help=f"the opposite of {flag} (overrides a YAML or checkpoint setting)")
        else:
            kind = getattr(argtypes, meta["kind"]) if meta["kind"] else None
            group.add_argument(flag, dest=f.name, default=None, type=kind, choices=meta["choices"],
                               metavar=meta["metavar"], help=meta["help"])
        if f.name == "out":
            group.add_argument("--config", default=None, metavar="FILE.yaml", help="training options from a YAML file")
    groups["what and where"].add_argument("--print-config", action="store_true",
                                          help="print the resolved training configuration and exit")
    parser.set_defaults(overrides=[])


def flag_keys() -> tuple[str, ...]:
    from mossnet.train.config import FLAG_FIELDS

    return tuple(f.name for f in FLAG_FIELDS)


def resolve_config(args: argparse.Namespace):
    from mossnet.train.config import build_config, load_yaml, parse_overrides

    flags = {k: getattr(args, k, None) for k in flag_keys()}
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
    import os
    from pathlib import Path

    import yaml

    from mossnet.train.checkpoint import CONFIG_FILE, read_trainer_state
    from mossnet.errors import CheckpointError
    from mossnet.rundir import TRAINER

    if int(os.environ.get("RANK", "0")) == 0:  # one process repairs an interrupted save (see Trainer)
        read_trainer_state(path, verify=False)  # a clear line for a missing, old-layout or unfinished checkpoint
    else:
        from mossnet.rundir import atomic

        try:
            atomic.wait_until_recovered(path)
        except TimeoutError as err:
            raise CheckpointError(str(err)) from None
        read_trainer_state(path, verify=False, recover=False)
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
