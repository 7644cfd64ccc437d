"""Build a prepared corpus directory: text -> tokenizer -> token files -> manifest.

This is the whole of ``mossnet prepare-data``; the command line only parses arguments and
prints the result.
"""

from __future__ import annotations

import importlib.metadata
from datetime import datetime, timezone
from pathlib import Path

from mossnet.data.corpora import SPLITS, load_corpus
from mossnet.data.token_store import FORMAT, MANIFEST_NAME, token_dtype, write_manifest, write_tokens
from mossnet.data.tokenizer import build_tokenizer, encode_documents, save_tokenizer


def prepare_data(
    out_dir: str | Path,
    corpus: str = "shakespeare",
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    max_documents: int | None = None,
    progress: bool = True,
) -> dict:
    """Prepare ``corpus`` into ``out_dir`` and return its manifest (also in ``manifest.json``).

    ``tokenizer`` is ``"bpe"`` (trained on the train split, ``vocab_size`` tokens, default
    4096) or ``"gpt2"``. ``max_documents`` keeps the first N documents of each split (tests).
    Raises :class:`~mossnet.data.errors.DataError` (with a fix in its message) on bad input or
    a missing data package.
    """
    out_dir = Path(out_dir)
    splits = load_corpus(corpus, max_documents)
    tok = build_tokenizer(tokenizer, (doc.text for doc in splits["train"]), vocab_size)
    vocab = len(tok)
    dtype = token_dtype(vocab)

    out_dir.mkdir(parents=True, exist_ok=True)
    # A manifest marks a complete directory: drop the old one before touching any file.
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    save_tokenizer(tok, out_dir)

    entries = {}
    for split in SPLITS:
        documents = splits[split]
        texts = [doc.text for doc in documents]
        file = f"{split}.bin"
        tokens, sha256 = write_tokens(
            out_dir / file,
            encode_documents(tok, texts, progress=progress, description=f"tokenizing {split}"),
            dtype,
        )
        entries[split] = {
            "file": file,
            "tokens": tokens,  # includes one eos per document
            "bytes": sum(len(text.encode("utf-8")) for text in texts),  # for bits per byte
            "documents": len(documents),
            "sha256": sha256,
            "document_names": [doc.name for doc in documents],
        }

    manifest = {
        "format": FORMAT,
        "corpus": corpus,
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "eos_id": tok.eos_token_id,
        "dtype": dtype.name,
        "splits": entries,
        "max_documents": max_documents,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mossnet_version": _mossnet_version(),
    }
    write_manifest(out_dir, manifest)
    return manifest


def _mossnet_version() -> str:
    # From the installed distribution's metadata: importing mossnet itself would load the model.
    try:
        return importlib.metadata.version("mossnet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
