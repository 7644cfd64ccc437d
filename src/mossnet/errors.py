"""The errors a person can act on, one type per domain.

Every command of the ``mossnet`` CLI catches :class:`MossNetError` once, at its boundary
(``cli/main.py``), and prints the message as a single line with a non-zero exit, without a
traceback (``MOSSNET_DEBUG=1`` shows it). So a message must say what is wrong and, where it
can, what to do; it must not rely on a traceback to be understood.

This module imports nothing heavy: the CLI and ``mossnet --help`` load it without torch.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): what a one-line
    error keeps of a library's multi-line message."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class MossNetError(Exception):
    """Base of every error meant for the person at the terminal. ``exit_code`` is what the
    CLI returns."""

    exit_code = 2


class ConfigError(MossNetError, ValueError):
    """A model or training configuration value is invalid (unknown key, wrong type, out of range)."""


class OptionError(MossNetError, ValueError):
    """A command-line option, or a combination of options, is invalid."""


class DeviceError(MossNetError):
    """The requested device or execution path is not available on this machine."""


class MissingExtraError(MossNetError):
    """An optional dependency (a ``pip install mossnet[extra]``) is needed and not installed."""

    def __init__(self, what: str, extra: str, packages: str):
        super().__init__(f"{what} needs {packages}, which is not installed: pip install 'mossnet[{extra}]'")


class CheckpointError(MossNetError, RuntimeError):
    """A checkpoint or model directory is missing, incomplete, corrupt, or does not match the run."""


class OutputDirError(MossNetError):
    """An output directory cannot be used without risking someone's files (see docs/RELIABILITY.md)."""


class DataError(MossNetError):
    """A prepared corpus, or the text it is built from, is missing, corrupt or inconsistent."""
