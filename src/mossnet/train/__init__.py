"""Training: ``train(TrainConfig)`` and the pieces it is made of (one concept per module).

config.py        TrainConfig, presets, YAML and key=value overrides
optim.py         AdamW weight-decay groups, warmup + cosine schedule
checkpoint.py    atomic HF-directory checkpoints, trainer state without pickle
distributed.py   DDP / FSDP2 under torchrun
baselines.py     size-matched Llama / Mamba-2 configs, parameter counts
metrics.py       JSONL / CSV / TensorBoard logs
plots.py         the loss-curve PNG
loop.py          the trainer itself
"""

from .config import TrainConfig, build_config

__all__ = ["TrainConfig", "build_config", "train"]


def train(cfg: TrainConfig):
    from .loop import train as _train

    return _train(cfg)
