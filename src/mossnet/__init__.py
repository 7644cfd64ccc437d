"""MossNet: a mixture-of-state-space-experts language model (arXiv 2510.26182).

Importing ``mossnet`` registers ``MossNetConfig`` / ``MossNetModel`` / ``MossNetForCausalLM``
with transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .models.mossnet import MossNetCache, MossNetConfig, MossNetForCausalLM, MossNetModel

__version__ = "0.1.0"

AutoConfig.register("mossnet", MossNetConfig, exist_ok=True)
AutoModel.register(MossNetConfig, MossNetModel, exist_ok=True)
AutoModelForCausalLM.register(MossNetConfig, MossNetForCausalLM, exist_ok=True)

__all__ = ["MossNetCache", "MossNetConfig", "MossNetForCausalLM", "MossNetModel", "__version__"]
