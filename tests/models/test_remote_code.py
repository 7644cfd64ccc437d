"""A saved MossNet directory works in tools that never ``import mossnet``: transformers' Auto
classes and pipeline with trust_remote_code, and lm-eval's own ``hf`` model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mossnet import MossNetConfig, MossNetForCausalLM

    out = tmp_path_factory.mktemp("remote") / "model"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.train_from_iterator(["the cat sat on the mat"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = MossNetConfig(vocab_size=len(tok), d_model=32, n_layers=1, ssm_experts=2, ssm_top_k=1, ssm_head_dim=8,
                           ssm_state_dim=4, mlp_experts=2, mlp_top_k=1, mlp_hidden_dim=32, eos_token_id=0)
    MossNetForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _run(code: str, cwd) -> str:
    """Run ``code`` in a fresh interpreter; fail if it imported mossnet before loading the model."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_config_names_its_classes_and_the_shims_exist(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mossnet.MossNetForCausalLM"
    for name in ("configuration_mossnet.py", "modeling_mossnet.py"):
        assert "from mossnet.models.mossnet" in (model_dir / name).read_text()


def test_auto_class_and_pipeline_without_import(model_dir, tmp_path):
    out = _run(f"""
        import sys
        from transformers import AutoModelForCausalLM, pipeline
        assert "mossnet" not in sys.modules
        model = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        print(type(model).__name__)
        gen = pipeline("text-generation", model={str(model_dir)!r}, trust_remote_code=True, device="cpu")
        text = gen("the cat", max_new_tokens=4, do_sample=False)[0]["generated_text"]
        print("TEXT", text.startswith("the cat"))
    """, tmp_path)
    assert "MossNetForCausalLM" in out and "TEXT True" in out


@pytest.mark.slow
def test_lm_eval_hf_backend_loads_the_directory(model_dir, tmp_path):
    """lm-eval's own CLI (`--model hf`), on a two-document local task: no plugin, no import."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"the cat {i}", "choices": [" sat", " mat"], "label": i % 2})
                              for i in range(2)) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(textwrap.dedent(f"""
        task: tiny_choice
        dataset_path: json
        dataset_kwargs:
          data_files:
            validation: {data}
        validation_split: validation
        output_type: multiple_choice
        doc_to_text: "{{{{q}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        metric_list:
          - metric: acc
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={model_dir},trust_remote_code=True", "--tasks", "tiny_choice",
                           "--include_path", str(tasks), "--device", "cpu", "--batch_size", "2"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tiny_choice" in proc.stdout and "acc" in proc.stdout
