"""Loading a teacher (a transformers Llama-family directory or a GGUF file) and checking that the
training data was tokenized with its tokenizer."""

from __future__ import annotations

from pathlib import Path

from mossnet.errors import CheckpointError, DataError


def load_teacher(path: str, device: str = "auto"):
    """``(model, tokenizer)`` in eval mode, fp32, on ``device``, gradients off."""
    import torch

    from mossnet.rundir.load import load_model, load_tokenizer
    from mossnet.runtime import resolve_device

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        model = load_model(p.parent, gguf_file=p.name, dtype=torch.float32, device=resolve_device(device))
        tokenizer = load_tokenizer(p.parent, gguf_file=p.name)
    elif p.is_dir():
        model = load_model(p, dtype=torch.float32, device=resolve_device(device))
        tokenizer = load_tokenizer(p, model=model)
    else:
        raise CheckpointError(f"--teacher {path}: not a model directory or a .gguf file")
    if not hasattr(getattr(model, "model", None), "layers") or not hasattr(model.model.layers[0], "self_attn"):
        raise CheckpointError(f"--teacher {path}: a {type(model).__name__} has no attention layers to distill from")
    model.requires_grad_(False)
    return model, tokenizer


def check_data_tokenizer(tokenizer, data_spec: str, teacher: str) -> None:
    """The prepared data's tokenizer must be the teacher's: same fingerprint when the manifest
    records one, else the same vocabulary size. One line otherwise."""
    from mossnet.data import read_manifest
    from mossnet.data.mixture import parse_data_sources

    try:
        from mossnet.data import tokenizer_fingerprint
    except ImportError:  # an older data package without fingerprints
        tokenizer_fingerprint = None
    for source in parse_data_sources(data_spec):
        manifest = read_manifest(source.path)
        recorded = manifest.get("tokenizer_fingerprint")
        if recorded and tokenizer_fingerprint is not None:
            if tokenizer_fingerprint(tokenizer) != recorded:
                raise DataError(f"{source.path} was prepared with another tokenizer than the teacher {teacher}'s; "
                                f"prepare it with: mossnet prepare-data --tokenizer {teacher} ...")
        elif int(manifest.get("vocab_size", -1)) != len(tokenizer):
            raise DataError(f"{source.path} has a vocabulary of {manifest.get('vocab_size')} tokens but the teacher "
                            f"{teacher}'s tokenizer has {len(tokenizer)}; prepare the data with --tokenizer {teacher}")
