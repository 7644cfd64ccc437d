"""A user's own text: finding the input files (``--input``) and streaming documents out of them.

==========================  ===================================================================
input                       documents
==========================  ===================================================================
``.txt``, ``.md``           ``--doc-split file`` (default): the whole file; ``blankline``: each
                            paragraph (lines up to a blank line); ``line``: each non-blank line
``.jsonl``, ``.jsonl.gz``,  one JSON object per line; the document is its ``--text-field``
``.jsonl.zst``              (default ``text``); blank lines are skipped
``.parquet``                the ``--text-field`` column, row by row
a saved ``datasets``        a folder holding ``dataset_info.json``, ``state.json`` or
dataset                     ``dataset_dict.json`` (``save_to_disk``); its ``--text-field``
                            column, every split of a DatasetDict in sorted order
any other folder            walked recursively in sorted order (hidden entries skipped; files of
                            other types are skipped and counted)
a glob                      expanded here (``**`` included), so quoted patterns work
==========================  ===================================================================

Everything is streamed: a document is in memory only while it is read and tokenized, never the
whole corpus (a ``--doc-split file`` document is one whole file). Empty and null documents are
skipped and counted. Invalid UTF-8 is replaced by U+FFFD and counted, or refused with
``strict`` (the error names the file and line). Every problem a person can fix is an
:class:`~mossnet.data.errors.InputError` with one line naming the file (and line).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mossnet.data.errors import InputError, MissingDataPackageError
from mossnet.errors import first_line

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DOC_SPLITS = ("file", "blankline", "line")
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class InputFile:
    """One input: ``kind`` is ``text``, ``jsonl``, ``parquet`` or ``dataset``; ``size`` its
    bytes on disk (what the progress bar counts)."""

    path: Path
    kind: str
    size: int


@dataclass
class ExpandedInputs:
    files: list[InputFile]
    skipped: list[Path] = field(default_factory=list)  # files of other types inside walked folders
    read_dirs: list[Path] = field(default_factory=list)  # folders named (or matched) as inputs


def kind_of(path: Path) -> str | None:
    """The input kind a file name says, or None for a type we do not read."""
    name = path.name.lower()
    for kind, suffixes in (("text", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in DATASET_MARKERS)


def expand_inputs(inputs: list[str]) -> ExpandedInputs:
    """Every input file, in the order given (folders and globs in sorted order), each once.

    Raises InputError for a path that does not exist, a glob that matches nothing, a file named
    explicitly whose type is unknown, or inputs that hold no readable file at all.
    """
    result = ExpandedInputs(files=[])
    seen: set[Path] = set()
    for arg in inputs:
        path = Path(arg)
        if path.exists() or not _GLOB_MAGIC.search(arg):
            if not path.exists():
                raise InputError(f"--input {arg}: no such file or directory")
            _add(path, result, seen, explicit=True)
            continue
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"--input {arg}: the pattern matches no file")
        for match in matches:
            _add(Path(match), result, seen, explicit=False)
    if not result.files:
        where = ", ".join(inputs)
        extra = f" (skipped {_names(result.skipped)})" if result.skipped else ""
        raise InputError(f"--input {where}: no {', '.join(KNOWN_SUFFIXES)} "
                         f"file or saved dataset found{extra}")
    return result


def _add(path: Path, result: ExpandedInputs, seen: set[Path], *, explicit: bool) -> None:
    if path.is_dir():
        result.read_dirs.append(path)
        if is_saved_dataset(path):
            _append(InputFile(path, "dataset", _tree_size(path)), result, seen)
            return
        for root, dirs, files in os.walk(path):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                file = root_path / name
                kind = kind_of(file)
                if kind is None:
                    result.skipped.append(file)
                else:
                    _append(InputFile(file, kind, file.stat().st_size), result, seen)
            # A saved dataset inside a walked folder is read as a dataset, not walked into.
            for d in list(dirs):
                if is_saved_dataset(root_path / d):
                    dirs.remove(d)
                    _append(InputFile(root_path / d, "dataset", _tree_size(root_path / d)), result, seen)
        return
    kind = kind_of(path)
    if kind is None:
        if explicit:
            raise InputError(
                f"--input {path}: unknown file type; expected {', '.join(KNOWN_SUFFIXES)}, "
                "a folder, or a dataset saved with datasets' save_to_disk"
            )
        result.skipped.append(path)
        return
    _append(InputFile(path, kind, path.stat().st_size), result, seen)


def _append(item: InputFile, result: ExpandedInputs, seen: set[Path]) -> None:
    key = item.path.resolve()
    if key not in seen:  # named twice (a folder and a glob inside it): read once
        seen.add(key)
        result.files.append(item)


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _names(paths: list[Path], n: int = 3) -> str:
    more = f" and {len(paths) - n} more" if len(paths) > n else ""
    return ", ".join(str(p) for p in paths[:n]) + more


# ---------------------------------------------------------------------------------------------
# Reading documents


def _count_and_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _REPLACED[0] += 1
    return "\ufffd", err.end


_REPLACED = [0]  # invalid UTF-8 sequences replaced so far in this process (only the reader decodes)
codecs.register_error("mossnet-count-replace", _count_and_replace)
_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK = object()  # a blank JSON Lines line


class RawDocument(NamedTuple):
    """A document as read: ``name`` says where it is (``file:line``, ``file#row``; ``str(name)``
    gives the text), ``data`` is ``text`` in UTF-8, ``disk_bytes`` how far the input's file
    advanced since the last document."""

    name: object
    text: str
    data: bytes
    disk_bytes: int


class _Where(NamedTuple):
    """``file:line``, formatted only when asked (most documents never need their name)."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class DocumentReader:
    """Streams documents out of :class:`InputFile` s, counting what it replaced or skipped."""

    def __init__(self, text_field: str = "text", doc_split: str = "file", strict: bool = False):
        if doc_split not in DOC_SPLITS:
            raise InputError(f"--doc-split must be one of {list(DOC_SPLITS)}, got {doc_split!r}")
        self.text_field = text_field
        self.doc_split = doc_split
        self.strict = strict
        self.replaced = 0  # invalid UTF-8 sequences (and lone surrogates) replaced by U+FFFD
        self.skipped_empty = 0  # empty, blank or null documents

    def documents(self, item: InputFile) -> Iterator[RawDocument]:
        read = {"text": self._text, "jsonl": self._jsonl, "parquet": self._parquet, "dataset": self._dataset}[item.kind]
        yield from read(item)

    # -- helpers ------------------------------------------------------------------------------

    def _decode(self, raw: bytes, where: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.strict:
                raise InputError(f"{where}: invalid UTF-8 at byte {err.start} of the line or file ({err.reason}); "
                                 "without --strict it is replaced by U+FFFD and counted") from None
            before = _REPLACED[0]
            text = raw.decode("utf-8", "mossnet-count-replace")
            self.replaced += _REPLACED[0] - before
            return text

    def _document(self, name: str, text: str, disk_bytes: int) -> RawDocument | None:
        if not text or text.isspace():
            self.skipped_empty += 1
            return None
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
            if self.strict:
                raise InputError(f"{name}: the text holds a lone UTF-16 surrogate (invalid Unicode); "
                                 "without --strict it is replaced by U+FFFD and counted") from None
            self.replaced += len(_SURROGATE.findall(text))
            text = _SURROGATE.sub("\ufffd", text)
            data = text.encode("utf-8")
        return RawDocument(name, text, data, disk_bytes)

    def _emit(self, name: str, text: str, disk_bytes: int, pending: list[int]) -> Iterator[RawDocument]:
        """Yield the document (if not empty), carrying the disk bytes not yet reported."""
        pending[0] += disk_bytes
        doc = self._document(name, text, pending[0])
        if doc is not None:
            pending[0] = 0
            yield doc

    # -- formats ------------------------------------------------------------------------------

    def _text(self, item: InputFile) -> Iterator[RawDocument]:
        path, pending = item.path, [0]
        if self.doc_split == "file":
            text = self._decode(path.read_bytes(), str(path)).removeprefix("\ufeff")
            yield from self._emit(str(path), text, item.size, pending)
            return
        with path.open("rb") as file:
            paragraph: list[str] = []
            start = 0
            for lineno, raw in enumerate(file, 1):
                line = self._decode(raw, f"{path}:{lineno}")
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if self.doc_split == "line":
                    yield from self._emit(f"{path}:{lineno}", line.rstrip("\r\n"), len(raw), pending)
                elif line.strip():
                    start = start or lineno
                    paragraph.append(line)
                    pending[0] += len(raw)
                else:
                    pending[0] += len(raw)
                    if paragraph:
                        yield from self._emit(f"{path}:{start}", "".join(paragraph).rstrip("\r\n"), 0, pending)
                    paragraph, start = [], 0
            if paragraph:
                yield from self._emit(f"{path}:{start}", "".join(paragraph).rstrip("\r\n"), 0, pending)

    def _jsonl(self, item: InputFile) -> Iterator[RawDocument]:
        # The hot loop for large corpora: json.loads reads the raw bytes (UTF-8) directly, and a
        # line's "file:line" name is only formatted for an error or a kept document.
        path, pending, field_name = item.path, [0], self.text_field
        with path.open("rb") as raw_file, _decompressed(raw_file, path) as lines:
            plain, position = lines is raw_file, 0
            for lineno, raw in enumerate(lines, 1):
                if plain:
                    advanced = len(raw)
                elif lineno % 1024 == 0:  # a compressed file: how far its compressed bytes got
                    advanced, position = raw_file.tell() - position, raw_file.tell()
                else:
                    advanced = 0
                try:
                    record = json.loads(raw)
                except UnicodeDecodeError:
                    record = self._json(self._decode(raw, f"{path}:{lineno}"), raw, path, lineno)
                except json.JSONDecodeError as err:
                    if not raw.strip():  # a blank line
                        pending[0] += advanced
                        continue
                    raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
                if record is _BLANK:
                    pending[0] += advanced
                    continue
                if type(record) is not dict:
                    raise InputError(f"{path}:{lineno}: expected a JSON object per line, got a {type(record).__name__}")
                try:
                    text = record[field_name]
                except KeyError:
                    raise InputError(f"{path}:{lineno}: no field {field_name!r}; the keys present are "
                                     f"{sorted(record)[:20]}; choose one with --text-field") from None
                if text is not None and type(text) is not str:
                    raise InputError(f"{path}:{lineno}: field {field_name!r} is a {type(text).__name__}, not a string")
                yield from self._emit(_Where(path, lineno), text or "", advanced, pending)

    @staticmethod
    def _json(text: str, raw: bytes, path: Path, lineno: int):
        """A line that needed its invalid UTF-8 replaced; _BLANK for a blank one."""
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            if not raw.strip():
                return _BLANK
            raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None

    def _parquet(self, item: InputFile) -> Iterator[RawDocument]:
        pa, pq = _import_pyarrow()
        path = item.path
        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: not a readable Parquet file ({first_line(err)})") from None
        schema = file.schema_arrow
        _check_column(path, schema.names, self.text_field, "columns")
        column_type = schema.field(self.text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
                or str(column_type) == "string_view"):
            raise InputError(f"{path}: column {self.text_field!r} holds {column_type}, not strings")
        rows = max(file.metadata.num_rows, 1)
        pending, row = [0], 0
        for batch in file.iter_batches(batch_size=1024, columns=[self.text_field]):
            share = item.size * batch.num_rows // rows
            for i, text in enumerate(batch.column(0).to_pylist()):
                yield from self._emit(f"{path}#row{row}", text or "", share if i == 0 else 0, pending)
                row += 1

    def _dataset(self, item: InputFile) -> Iterator[RawDocument]:
        try:
            import datasets
        except ImportError:
            raise MissingDataPackageError("a saved dataset input", "datasets", "pip install datasets") from None
        path = item.path
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a damaged folder
            raise InputError(f"{path}: not a readable saved dataset ({first_line(err)})") from None
        parts = [(name, loaded[name]) for name in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) \
            else [("", loaded)]
        rows = max(sum(len(part) for _, part in parts), 1)
        pending = [0]
        for split_name, part in parts:
            where = f"{path}/{split_name}" if split_name else str(path)
            _check_column(where, part.column_names, self.text_field, "columns")
            feature = part.features[self.text_field]
            if getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise InputError(f"{where}: column {self.text_field!r} holds {feature}, not strings")
            row = 0
            for batch in part.select_columns([self.text_field]).iter(batch_size=1000):
                texts = batch[self.text_field]
                share = item.size * len(texts) // rows
                for i, text in enumerate(texts):
                    yield from self._emit(f"{where}#row{row}", text or "", share if i == 0 else 0, pending)
                    row += 1


def _decompressed(raw_file, path: Path):
    """A binary line-iterable stream over ``raw_file`` (gzip or zstd by suffix, else itself)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw_file, mode="rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise MissingDataPackageError(f"--input {path}", "zstandard", "pip install zstandard") from None
        reader = zstandard.ZstdDecompressor().stream_reader(raw_file, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return _NoClose(raw_file)


class _NoClose:
    """``raw_file`` as a context manager that leaves closing to its own ``with``."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self.file

    def __exit__(self, *exc):
        return False


def _check_column(where, names: list[str], wanted: str, what: str) -> None:
    if wanted not in names:
        raise InputError(f"{where}: no field {wanted!r}; the {what} present are {list(names)[:20]}; "
                         "choose one with --text-field")


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDataPackageError("a Parquet input", "pyarrow", "pip install pyarrow") from None
    return pa, pq

