"""The one way a command loads a model directory for use (generate, eval, export, init-from,
distillation students): locate, verify, load, check. Every failure is one CheckpointError line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mossnet.errors import CheckpointError, first_line

from .integrity import check_finite, check_tokenizer_fits, verify_model_dir
from .layout import resolve_model_dir


def load_model(path: str | os.PathLike, *, dtype=None, device=None, verify: bool = True,
               trust_remote_code: bool = False, gguf_file: str | None = None) -> Any:
    """Load the causal LM that ``path`` names (a run directory, its ``model/``, any Hugging Face
    model directory, or a folder holding ``gguf_file``) in eval mode.

    With ``verify``, recorded SHA-256s are checked first (seconds at ``base`` size) and
    non-finite weights are refused after loading. Missing, unexpected or mis-shaped weights are
    refused too: transformers would silently initialise them at random."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    import mossnet.models.mossnet  # noqa: F401  (registers MossNet with the Auto classes)

    if gguf_file:
        model_dir = Path(path)
        if not (model_dir / gguf_file).is_file():
            raise CheckpointError(f"{model_dir / gguf_file} does not exist")
    else:
        model_dir = resolve_model_dir(path)
        verify_model_dir(model_dir, verify)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code,
            output_loading_info=True, **extra)
    except (CheckpointError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise CheckpointError(f"cannot load the model in {model_dir}: {first_line(err)}") from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {sorted(map(str, v))[:4]}" for k, v in problems.items())
        raise CheckpointError(f"the weights in {model_dir} do not match its config.json ({detail})")
    if verify:
        check_finite(model, str(model_dir))
    if device is not None:
        model.to(device)
    return model.eval()


def load_tokenizer(model_dir_or_path: str | os.PathLike, *, model=None, gguf_file: str | None = None):
    """The tokenizer stored with a model (or at an explicit path), checked against the model's
    vocabulary when ``model`` is given."""
    from transformers import AutoTokenizer

    path = Path(model_dir_or_path)
    if not gguf_file and path.is_dir() and not _has_tokenizer(path):
        try:
            path = resolve_model_dir(path)
        except CheckpointError:
            pass
    if not gguf_file and (not path.exists() or (path.is_dir() and not _has_tokenizer(path))):
        raise CheckpointError(f"no tokenizer in {path} (pass --tokenizer DIR, e.g. the prepared data's tokenizer/)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as err:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {first_line(err)}") from None
    if model is not None:
        check_tokenizer_fits(tokenizer, int(model.config.vocab_size), str(path))
    return tokenizer


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                     "tokenizer.model"))

