"""The ``mossnet`` console script.

Importing the ``mossnet`` package registers MossNet with transformers' Auto classes, which loads
torch and transformers (seconds). The command line needs them only for commands that run a
model, so the console script imports this module first: while it is loaded, the package skips
the eager registration, and each command imports ``mossnet.models.mossnet`` when it needs the
model. ``mossnet --help`` and ``mossnet --version`` then answer in a fraction of a second.
"""

from __future__ import annotations

import sys


def main() -> int:
    from mossnet.cli.main import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
