"""Load a checkpoint folder (MossNet or any Hugging Face causal LM) for evaluation, offline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks CUDA when present; a CUDA request on a machine without one falls
    back to the CPU with a warning (lm-eval's CLI passes "cuda" by habit)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("CUDA requested but not available; evaluating on the CPU", stacklevel=2)
        return torch.device("cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """"float32" (default), "bfloat16" or "float16", or a torch dtype."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


def _register_mossnet() -> None:
    """Importing the model package registers MossNet with the Auto classes (once it exists)."""
    try:
        import mossnet.models.mossnet  # noqa: F401
    except ImportError:  # a checkout where the model package is not built yet
        pass


def load_causal_lm(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    gguf_file: str | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder, in eval mode, on ``device``.

    Works for MossNet checkpoints (importing ``mossnet.models.mossnet`` registers the Auto classes) and any
    Hugging Face causal LM folder, including a GGUF file inside one (``gguf_file=``; needs the
    ``gguf`` and ``accelerate`` packages; weights are dequantized to ``dtype``). Never downloads.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _register_mossnet()
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, **extra
    )
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_path or path, trust_remote_code=trust_remote_code, **({} if tokenizer_path else extra)
    )
    model.to(resolve_device(device)).eval()
    return model, tokenizer
