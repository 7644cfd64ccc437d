"""Data for MossNet: corpora from installed packages, tokenizers, token files, batches, bigram.

=====================  =========================================================================
module                 what it holds
=====================  =========================================================================
``corpora``            finding the text of a corpus in installed packages; train/val/test split
``info_text``          plain text from a GNU Info manual (the Python docs corpus)
``sources``            the user's own text (``--input``): files, folders, globs, saved datasets
``tokenizer``          the trained BPE, GPT-2's, a tokenizer from a path; fingerprints
``encode``             tokenizing chunks of documents in worker processes
``token_store``        the format: shard files, ``manifest.json``, checksums, ``open_split``
``shards``             a split of several shard files, read as one array; the shard writer
``verify``             checking a corpus before use (``verify_corpus``)
``prepare``            the whole preparation (``mossnet prepare-data``)
``batches``            random resumable training batches; sequential evaluation windows
``bigram``             a smoothed bigram model, the baseline a trained model must beat
``errors``             exceptions with messages meant for the command line
=====================  =========================================================================

The public names below are importable from ``mossnet.data`` directly; each is loaded on first
use, so that ``import mossnet.data`` stays cheap (torch and transformers load only if needed).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "Document": "corpora",
    "load_corpus": "corpora",
    "corpus_names": "corpora",
    "SPLITS": "corpora",
    "build_tokenizer": "tokenizer",
    "train_bpe_tokenizer": "tokenizer",
    "gpt2_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "save_tokenizer": "tokenizer",
    "encode_documents": "tokenizer",
    "tokenizer_fingerprint": "tokenizer",
    "tokenizer_from_path": "tokenizer",
    "separator_token": "tokenizer",
    "expand_inputs": "sources",
    "DocumentReader": "sources",
    "verify_corpus": "verify",
    "VERIFY_AT_START_BYTES": "verify",
    "ShardedTokens": "shards",
    "is_prepared_dir": "token_store",
    "FORMAT": "token_store",
    "read_manifest": "token_store",
    "write_manifest": "token_store",
    "open_split": "token_store",
    "verify_checksum": "token_store",
    "check_token_ids": "token_store",
    "token_dtype": "token_store",
    "write_tokens": "token_store",
    "prepare_data": "prepare",
    "TokenBatches": "batches",
    "sequential_windows": "batches",
    "IGNORE_INDEX": "batches",
    "BigramModel": "bigram",
    "fit_bigram": "bigram",
    "bigram_cross_entropy": "bigram",
    "unigram_cross_entropy": "bigram",
    "DataError": "errors",
    "MissingDataPackageError": "errors",
    "ManifestError": "errors",
    "ChecksumError": "errors",
    "InputError": "errors",
    "TokenIdError": "errors",
    "SplitTooShortError": "errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mossnet.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mossnet.data.{_PUBLIC[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
