"""MossNet: a mixture-of-state-space-experts language model (arXiv 2510.26182).

The model classes load on first use: ``from mossnet import MossNetForCausalLM`` (or any of
``MossNetCache``, ``MossNetConfig``, ``MossNetModel``) imports :mod:`mossnet.models.mossnet`,
which registers MossNet with transformers' ``AutoConfig``, ``AutoModel`` and
``AutoModelForCausalLM``. ``import mossnet`` alone imports neither torch nor transformers, so
that the ``mossnet`` command answers ``--help`` and ``--version`` at once; code that only needs
the registration imports ``mossnet.models.mossnet``.
"""

# The one place the version is written: pyproject.toml reads it (setuptools' dynamic version)
# and the installed metadata, `mossnet --version` and `mossnet info` report it.
__version__ = "0.1.0"

_MODEL_EXPORTS = ("MossNetCache", "MossNetConfig", "MossNetForCausalLM", "MossNetModel")


def __getattr__(name: str):
    if name in _MODEL_EXPORTS:
        from .models import mossnet as model_package  # importing it registers the Auto classes

        return getattr(model_package, name)
    raise AttributeError(f"module 'mossnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODEL_EXPORTS])


__all__ = [*_MODEL_EXPORTS, "__version__"]
