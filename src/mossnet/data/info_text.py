"""Plain text from a GNU Info manual (the form Debian ships the Python documentation in).

An Info file is a sequence of *nodes*, each starting with a ``\\x1f`` line and a header such as
``File: python3.11.info,  Node: New Features,  Next: ...,  Up: What's New In Python 3 11``;
after the last node comes a ``Tag Table`` (byte offsets, not text). Large manuals may be split
into ``name.info-1``, ``name.info-2``, ... listed in an ``Indirect:`` table of the main file.

The markup we remove, because a language model should learn prose and code, not navigation:
cross references ``*note label: target.`` (kept as ``label``), menus (``* Menu:`` and the entry
lines after it, which end a node by convention), heading underlines and image placeholders.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

NODE_SEPARATOR = "\x1f\n"


@dataclass(frozen=True)
class InfoNode:
    """One node: its name, the name of its parent (``Up``; ``None`` at the top) and its text."""

    name: str
    up: str | None
    text: str


def read_info_file(path: Path) -> str:
    """The whole manual as one string, following an ``Indirect:`` table to its sub-files."""
    main = _read_maybe_gzip(path)
    indirect = re.search(r"\x1f\nIndirect:\n(.*?)\x1f", main, flags=re.S)
    if indirect is None:
        return main
    # Each line is "python3.11.info-1: 1234" (sub-file name and its starting byte offset).
    parts = []
    for line in indirect.group(1).splitlines():
        name = line.split(":", 1)[0].strip()
        if name:
            candidates = sorted(path.parent.glob(name + "*"))  # the sub-file may be gzipped
            if candidates:
                parts.append(_read_maybe_gzip(candidates[0]))
    return "".join(parts)


def _read_maybe_gzip(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def parse_info_nodes(raw: str) -> list[InfoNode]:
    """Split a manual into its nodes, in file order, with their Info markup stripped.

    Text before the first node (the preamble) and the tag table after the last are dropped.
    """
    nodes = []
    for chunk in raw.split(NODE_SEPARATOR)[1:]:
        header, _, body = chunk.partition("\n")
        fields = _header_fields(header)
        if "Node" not in fields:  # "Tag Table:", "End Tag Table", "Indirect:" ...
            continue
        up = fields.get("Up")
        nodes.append(InfoNode(fields["Node"], None if up in (None, "(dir)") else up, strip_info_markup(body)))
    return nodes


def _header_fields(header: str) -> dict[str, str]:
    # "File: x.info,  Node: A, b,  Next: C,  Up: D": fields are separated by a comma and two
    # spaces, which node names (that may contain a single ", ") never do.
    fields = {}
    for part in header.split(",  "):
        key, sep, value = part.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


# "*note label: target." or "*note label: target," -- the target is a node name or an anchor id
# (Sphinx writes hex ids such as "16e"); it ends at the first period or comma. Labels may hold
# "*" ("except*") but not the start of another reference.
_LABEL = r"((?:(?!\*[Nn]ote)[^:])+?)"
_NOTE_WITH_TARGET = re.compile(r"\*[Nn]ote\s+" + _LABEL + r":\s+[^.,:]*?([.,])")
# "*note Node Name::"
_NOTE_SELF = re.compile(r"\*[Nn]ote\s+" + _LABEL + "::")
# What follows a terminating period when it also ended the sentence: Info's two spaces, or a
# line break and a capital letter, or the end of the paragraph.
_SENTENCE_END = re.compile(r"  |\n\s*[A-Z(]|\n\n|$")
_IMAGE = re.compile(r"\[image src=\"[^\"]*\"[^\]]*\]")
_UNDERLINE_CHARS = set("*=-.")


def strip_info_markup(text: str) -> str:
    """Node body -> plain text: references become their labels; menus, underlines, images go."""
    menu = text.find("* Menu:")
    if menu >= 0:
        text = text[:menu]
    text = _NOTE_SELF.sub(r"\1", text)
    text = _NOTE_WITH_TARGET.sub(_reference_label, text)
    text = _IMAGE.sub("", text)
    return _drop_heading_underlines(text).strip()


def _reference_label(match: re.Match) -> str:
    """``*note label: target.`` -> ``label``, keeping the punctuation that belongs to the prose.

    The terminator doubles as the sentence's punctuation: a comma always does, a period only
    at the end of a sentence ("type *note float: 419.  We will see" -> "type float.  We will").
    """
    label, terminator = match.group(1), match.group(2)
    if terminator == "," or _SENTENCE_END.match(match.string, match.end()):
        return label + terminator
    return label


def _drop_heading_underlines(text: str) -> str:
    """Remove the ``*****`` / ``=====`` / ``-----`` / ``.....`` line under each heading.

    Only a line of one repeated character that is exactly as long as the line above it counts,
    so rules and ellipses inside code blocks survive.
    """
    kept: list[str] = []
    for line in text.split("\n"):
        previous = kept[-1] if kept else ""
        is_underline = (
            len(line) >= 3
            and len(set(line)) == 1
            and line[0] in _UNDERLINE_CHARS
            and len(line) == len(previous)
        )
        if not is_underline:
            kept.append(line)
    return "\n".join(kept)


def group_by_ancestor(nodes: list[InfoNode], depth: int) -> dict[tuple[str, ...], list[InfoNode]]:
    """Group nodes under their ancestor ``depth`` levels below the top node, in file order.

    The key is the path of node names from the top's child down to that ancestor (shorter for
    nodes that are themselves shallower); the top node itself (path ``()``) is kept too, under
    key ``()``, so the caller decides what to drop. Depth 2 of the Python manual gives units such
    as ("The Python Standard Library", "Data Types"): big enough that holding one out for
    evaluation does not leak its text through neighbouring nodes.
    """
    parent = {node.name: node.up for node in nodes}
    groups: dict[tuple[str, ...], list[InfoNode]] = {}
    for node in nodes:
        path = [node.name]
        while parent.get(path[-1]) is not None and len(path) <= len(parent):  # guard: no cycles
            path.append(parent[path[-1]])
        path.reverse()  # top, child, grandchild, ..., node
        key = tuple(path[1 : 1 + depth])
        groups.setdefault(key, []).append(node)
    return groups
