"""The model card (``README.md``) written into every model directory: what the model is, how it
was made, and how to load it. Hugging Face's hub and most tools read it as the model's page."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def write_model_card(model_dir: str | Path, *, config, params: dict[str, int], made_by: str,
                     data: dict[str, Any] | None = None, tokens_seen: int | None = None,
                     results: dict[str, dict[str, float]] | None = None) -> Path:
    """Write ``model_dir/README.md`` (atomically: a reader never sees half a card).

    ``params``: {"total", "active"} parameter counts; ``made_by``: the command; ``data``: the
    prepared corpus' manifest (or None); ``results``: {name: {metric: value}}."""
    model_dir = Path(model_dir)
    text = render_model_card(config=config, params=params, made_by=made_by, data=data, tokens_seen=tokens_seen,
                             results=results)
    tmp = model_dir / ".README.md.mossnet-tmp"
    tmp.write_text(text)
    os.replace(tmp, model_dir / "README.md")
    return model_dir / "README.md"


def render_model_card(*, config, params: dict[str, int], made_by: str, data: dict[str, Any] | None,
                      tokens_seen: int | None, results: dict[str, dict[str, float]] | None) -> str:
    arch = getattr(config, "model_type", "unknown")
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             f"tags: [mossnet, {arch}]", "---", "", f"# {arch} model made with MossNet", ""]
    if arch == "mossnet":
        lines += ["A recurrent language model whose time mixing is a routed mixture of state-space experts "
                  "(each expert a linear-attention head) and whose channel mixing is a mixture of SwiGLU "
                  "experts (arXiv 2510.26182). Decoding costs the same at every position.", ""]
    lines += ["## Architecture", "", "| field | value |", "| --- | --- |"]
    for key in ("vocab_size", "d_model", "hidden_size", "n_layers", "num_hidden_layers", "ssm_experts",
                "ssm_top_k", "ssm_head_dim", "ssm_state_dim", "state_update", "mlp_experts", "mlp_top_k",
                "mlp_hidden_dim", "intermediate_size", "num_attention_heads"):
        if key in config.to_dict():
            lines.append(f"| `{key}` | {config.to_dict()[key]} |")
    lines.append(f"| parameters | {params['total']:,} total, {params['active']:,} active per token |")
    lines += ["", "## How it was made", "", f"- command: `{made_by}`",
              f"- written: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    if tokens_seen is not None:
        lines.append(f"- tokens seen in training: {tokens_seen:,}")
    if data:
        train = data.get("splits", {}).get("train", {})
        lines.append(f"- data: corpus `{data.get('corpus', '?')}`, tokenizer `{data.get('tokenizer', '?')}` "
                     f"(vocabulary {data.get('vocab_size', '?')}), {train.get('tokens', 0):,} training tokens")
    if results:
        lines += ["", "## Evaluation", "", "| evaluation | " + " | ".join(_metric_names(results)) + " |",
                  "| --- |" + " --- |" * len(_metric_names(results))]
        for name, metrics in results.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(m)) for m in _metric_names(results)) + " |")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", "# with `pip install mossnet`; trust_remote_code runs the installed package's code (the",
              "# two shim modules in this directory import it), never code stored in the checkpoint",
              "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)",
              "tokenizer = AutoTokenizer.from_pretrained(PATH)", "```", "",
              "`SHA256SUMS` records the weight and config files (`sha256sum -c SHA256SUMS`); MossNet's commands "
              "verify it before use.", ""]
    return "\n".join(lines)


def command_line() -> str:
    """How this process was started, for the card (``mossnet train ...``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("mossnet", "main.py", "__main__.py")):
        argv[0] = "mossnet"
    return " ".join(shlex.quote(a) for a in argv)


def _metric_names(results: dict[str, dict[str, float]]) -> list[str]:
    names: list[str] = []
    for metrics in results.values():
        names += [m for m in metrics if m not in names]
    return names


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)
