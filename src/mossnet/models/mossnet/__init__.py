"""The MossNet Hugging Face model. Importing this package registers ``"mossnet"`` with
transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import MossNetCache
from .configuration_mossnet import PRESETS, MossNetConfig
from .modeling_mossnet import MossNetForCausalLM, MossNetModel, MossNetPreTrainedModel

AutoConfig.register("mossnet", MossNetConfig, exist_ok=True)
AutoModel.register(MossNetConfig, MossNetModel, exist_ok=True)
AutoModelForCausalLM.register(MossNetConfig, MossNetForCausalLM, exist_ok=True)

__all__ = ["PRESETS", "MossNetCache", "MossNetConfig", "MossNetForCausalLM", "MossNetModel", "MossNetPreTrainedModel"]
