"""Load a checkpoint folder (MossNet or any Hugging Face causal LM) for evaluation, offline.

The model goes through :func:`mossnet.rundir.load.load_model` (a run directory or its
``model/``, SHA-256 and finite-weight checks, one CheckpointError line for every failure), and
the device and dtype through :mod:`mossnet.runtime`, as in every other command.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mossnet import runtime


def _register_mossnet() -> None:
    """Importing the model package registers MossNet with the Auto classes."""
    import mossnet.models.mossnet  # noqa: F401


def load_causal_lm(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    gguf_file: str | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    verify: bool = True,
    need_tokenizer: bool = True,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder, in eval mode, on ``device``.

    Works for MossNet checkpoints (run directories, their ``model/``, older flat checkpoints)
    and any Hugging Face causal LM folder, including a GGUF file inside one (``gguf_file=``;
    needs the ``gguf`` and ``accelerate`` packages; weights are dequantized to ``dtype``). Never
    downloads. ``verify`` checks recorded SHA-256s and refuses non-finite weights. The tokenizer
    is checked against the model's vocabulary; with ``need_tokenizer=False`` a missing one gives
    ``None`` instead of an error (perplexity on prepared ids needs none).
    Raises CheckpointError or DeviceError with one line.
    """
    from mossnet.rundir.load import load_model, load_tokenizer

    target = runtime.resolve_device(device)  # before loading: an unavailable device fails in a second
    # no device for the dtype: "auto" is then fp32, evaluation's default on every device (unlike generation)
    model = load_model(path, dtype=runtime.resolve_dtype(dtype), device=target, verify=verify,
                       trust_remote_code=trust_remote_code, gguf_file=gguf_file)
    if not (need_tokenizer or tokenizer_path or gguf_file or has_tokenizer(path)):
        return model, None
    tokenizer = load_tokenizer(tokenizer_path or path, model=model, gguf_file=None if tokenizer_path else gguf_file)
    return model, tokenizer


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether the model folder ``path`` (a run directory, or a model directory) holds tokenizer files."""
    from pathlib import Path

    from mossnet.rundir.layout import MODEL
    from mossnet.rundir.load import _has_tokenizer

    path = Path(path)
    return path.is_dir() and (_has_tokenizer(path) or _has_tokenizer(path / MODEL))
