"""``python -m mossnet.eval ...``: lm-eval's own command line, with MossNet wired in.

Same arguments as ``lm_eval`` / ``lm-eval run``. Before handing over it

- imports ``mossnet`` (registers MossNet with the transformers Auto classes, so
  ``--model hf --model_args pretrained=DIR`` loads MossNet checkpoints),
- registers the ``mossnet`` model (``--model mossnet --model_args pretrained=DIR``),
- adds ``--include_path`` for our offline tasks (``offline_hellaswag``, ...) unless given.

Plain ``lm_eval`` knows neither: it has no plugin mechanism for models.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.__main__ import cli_evaluate

    from mossnet.eval import lm_eval_adapter  # noqa: F401  (registers "mossnet")
    from mossnet.eval.harness import TASKS_DIR
    from mossnet.eval.loading import _register_mossnet

    _register_mossnet()
    args = sys.argv[1:]
    wants_help = not args or args[0] in ("-h", "--help")
    if not wants_help and not any(a.startswith("--include_path") for a in args):
        sys.argv += ["--include_path", str(TASKS_DIR)]
    sys.argv[0] = "python -m mossnet.eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
