"""Run directories: what a command that writes a model leaves on disk, and how it is kept safe.

    RUN/
      mossnet-run.json   marks RUN as written by MossNet (which command, when)
      model/             what ``from_pretrained`` loads: config, safetensors, tokenizer, model
                         card, SHA256SUMS of every weight and config file
      trainer/           optimizer, RNG and data position, train_config.yaml, state.json (last)
      logs/              metrics.jsonl / .csv, loss_curve.png, tensorboard/

* ``layout``    the names above, and where the model of a directory is (RUN, RUN/model, or an
                older flat checkpoint);
* ``ownership`` which output directories a command may write into (never someone else's files);
* ``atomic``    the save protocol: a checkpoint is replaced as a whole or not at all, on crash,
                signal or full disk;
* ``integrity`` SHA-256 records and their verification, finite weights;
* ``load``      the one way the commands load a model directory for use.

docs/RELIABILITY.md states what is guaranteed, and when each check runs.
"""

from .layout import LOGS, MARKER, MODEL, TRAINER, is_legacy_checkpoint, is_run_dir, resolve_model_dir, write_marker
from .ownership import claim_output_dir

__all__ = ["LOGS", "MARKER", "MODEL", "TRAINER", "claim_output_dir", "is_legacy_checkpoint", "is_run_dir",
           "resolve_model_dir", "write_marker"]
