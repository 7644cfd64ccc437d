"""MossNet: a mixture-of-state-space-experts language model (arXiv 2510.26182).

Importing ``mossnet`` registers ``MossNetConfig`` / ``MossNetModel`` / ``MossNetForCausalLM``
with transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` (docs/SPEC.md,
section 6). The one exception is the ``mossnet`` console script (``src/mossnet_cli.py``): it
imports the model only for the commands that run one, so that ``--help`` and ``--version``
answer without loading torch and transformers.
"""

import sys

# The one place the version is written: pyproject.toml reads it (setuptools' dynamic version)
# and the installed metadata, `mossnet --version` and `mossnet info` report it.
__version__ = "0.1.0"

_MODEL_EXPORTS = ("MossNetCache", "MossNetConfig", "MossNetForCausalLM", "MossNetModel")


if "mossnet_cli" not in sys.modules:
    from .models import mossnet as _model_package  # noqa: F401  (importing it registers the Auto classes)


def __getattr__(name: str):
    if name in _MODEL_EXPORTS:
        from .models import mossnet as model_package  # importing it registers the Auto classes

        return getattr(model_package, name)
    raise AttributeError(f"module 'mossnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODEL_EXPORTS])


__all__ = [*_MODEL_EXPORTS, "__version__"]
