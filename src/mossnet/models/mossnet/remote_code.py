"""Make a saved MossNet directory loadable by tools that never ``import mossnet``.

transformers finds a custom architecture through ``auto_map`` in config.json, and imports the
named modules from the model directory when the caller passes ``trust_remote_code=True``
(lm-eval's ``hf`` model, ``pipeline``, serving stacks). Our modules there are two-line shims
that import the *installed* package: the code that runs is the package's own, never a copy
frozen into the checkpoint, so fixes reach old checkpoints and nothing executable is pickled.
"""

from __future__ import annotations

from pathlib import Path

AUTO_MAP = {
    "AutoConfig": "configuration_mossnet.MossNetConfig",
    "AutoModel": "modeling_mossnet.MossNetModel",
    "AutoModelForCausalLM": "modeling_mossnet.MossNetForCausalLM",
}

_HEADER = ("# Written by MossNet: loads the installed `mossnet` package (pip install mossnet), so that\n"
           "# AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) works without `import mossnet`.\n")
SHIMS = {
    "configuration_mossnet.py": _HEADER + "from mossnet.models.mossnet.configuration_mossnet import MossNetConfig\n\n"
                                "__all__ = [\"MossNetConfig\"]\n",
    "modeling_mossnet.py": _HEADER + "from mossnet.models.mossnet.modeling_mossnet import MossNetForCausalLM, "
                           "MossNetModel\n\n__all__ = [\"MossNetForCausalLM\", \"MossNetModel\"]\n",
}


def write_shims(model_dir: str | Path) -> None:
    """Write the shim modules that ``AUTO_MAP`` names into ``model_dir``."""
    for name, text in SHIMS.items():
        (Path(model_dir) / name).write_text(text)
