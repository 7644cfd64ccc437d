from .cache import MossNetCache
from .configuration_mossnet import PRESETS, MossNetConfig
from .modeling_mossnet import MossNetForCausalLM, MossNetModel, MossNetPreTrainedModel

__all__ = ["PRESETS", "MossNetCache", "MossNetConfig", "MossNetForCausalLM", "MossNetModel", "MossNetPreTrainedModel"]
