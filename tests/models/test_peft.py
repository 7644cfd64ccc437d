"""LoRA through PEFT: ``target_parameters`` on the stacked expert tensors (every expert
projection is a raw 3-D parameter, so ``target_modules`` alone finds only the ordinary linears),
a few training steps, ``generate()`` with the adapter unmerged (decode enters every module
through ``forward``, which PEFT's ParamWrapper hooks), and ``merge_and_unload``."""

from __future__ import annotations

import peft
import pytest
import torch
from peft import LoraConfig, get_peft_model

from mossnet import MossNetForCausalLM

# The expert tensors of the MoSSE (in_proj (E, F, D), out_proj (E, D, P)) and the MoE-MLP
# (gate_up (E, 2H, D), down (E, D, H)): (experts, out, in), PEFT's default 3-D layout.
EXPERT_TENSORS = ["mixer.in_proj", "mixer.out_proj", "mlp.gate_up", "mlp.down"]
# The only ordinary nn.Linear layers are the optional shared expert's (the LM head is tied to
# the embedding).
LINEARS = ["shared.gate_up", "shared.down"]


def lora_model(make_model, shared_expert=False):
    base = make_model(mlp_shared_expert=shared_expert)
    targets = dict(target_modules=LINEARS) if shared_expert else {}
    config = LoraConfig(r=4, lora_alpha=8, target_parameters=EXPERT_TENSORS, **targets)
    keys = set(base.state_dict())  # before get_peft_model, which wraps modules in place
    return get_peft_model(base, config), keys


def train_a_few_steps(model, ids, steps=12):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def greedy_with_logits(model, prompt, n=6):
    out = model.generate(input_ids=prompt, max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                         output_logits=True)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.fixture
def trained(make_model):
    model, base_keys = lora_model(make_model)
    ids = torch.randint(0, 64, (4, 24))
    model, losses = train_a_few_steps(model, ids)
    return model, base_keys, losses


def test_lora_targets_the_expert_tensors(make_model):
    model, _ = lora_model(make_model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    wrapped = {m.parameter_name for m in model.modules() if isinstance(m, peft.tuners.lora.layer.ParamWrapper)}
    assert wrapped == {"in_proj", "out_proj", "gate_up", "down"}


def test_training_moves_the_loss_and_only_the_adapter(trained, make_model):
    model, _, losses = trained
    assert losses[-1] < losses[0] - 0.1, losses
    base = make_model()  # same seed: the frozen weights are unchanged
    frozen = {k.replace("base_model.model.", "").replace("base_layer.", ""): v
              for k, v in model.state_dict().items() if "lora_" not in k}
    for name, value in base.state_dict().items():
        assert torch.equal(frozen[name], value), name


def test_unmerged_generate_equals_the_merged_model(trained):
    """Decoding through the adapter (unmerged) gives the merged model's greedy tokens and
    step logits; with the adapter disabled the logits differ, so the adapter was applied."""
    model, base_keys, _ = trained
    prompt = torch.randint(0, 64, (2, 7))
    tokens, logits = greedy_with_logits(model, prompt)
    with model.disable_adapter():
        _, base_logits = greedy_with_logits(model, prompt)
    assert (logits - base_logits).abs().max() > 1e-2, "the adapter changed nothing: degenerate test"

    merged = model.merge_and_unload()
    merged_tokens, merged_logits = greedy_with_logits(merged, prompt)
    assert torch.equal(tokens, merged_tokens)
    torch.testing.assert_close(logits, merged_logits, rtol=1e-4, atol=1e-4)


def test_merge_and_unload_gives_a_plain_model(trained, tmp_path):
    model, base_keys, _ = trained
    merged = model.merge_and_unload()
    assert type(merged) is MossNetForCausalLM
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in merged.modules())
    assert set(merged.state_dict()) == base_keys  # checkpoint names unchanged
    merged.save_pretrained(tmp_path)
    again = MossNetForCausalLM.from_pretrained(tmp_path).eval()
    prompt = torch.randint(0, 64, (1, 5))
    assert torch.equal(again.generate(prompt, max_new_tokens=4, do_sample=False),
                       merged.generate(prompt, max_new_tokens=4, do_sample=False))


def test_shared_expert_linears_through_target_modules(make_model):
    """With ``mlp_shared_expert=True`` the shared expert's nn.Linear layers take LoRA through
    ``target_modules`` beside the expert tensors: training, unmerged generate, and the merged
    model's output agree. (PEFT 0.21's merge_and_unload leaves a LoRA layer nested inside
    another adapted module wrapped, so the merged model still holds those two wrappers; see
    docs/TRAINING.md.)

    PEFT 0.22.0 cannot set up this combination: it wraps the MoE-MLP for its expert tensors
    first, then looks up the shared expert by its old path through the wrapper and raises
    ``AttributeError: ParamWrapper has no attribute `shared```. That one failure is an expected
    failure here (a PEFT bug, in docs/TRAINING.md); any other fails the test, and a PEFT that
    fixes it runs the whole test."""
    try:
        model, _ = lora_model(make_model, shared_expert=True)
    except AttributeError as error:
        if "ParamWrapper has no attribute `shared`" in str(error):
            pytest.xfail(f"PEFT {peft.__version__} cannot combine target_modules inside a module "
                         "whose parameters target_parameters wraps")
        raise
    assert any("shared.gate_up.lora_A" in name for name, p in model.named_parameters() if p.requires_grad)
    model, losses = train_a_few_steps(model, torch.randint(0, 64, (4, 24)))
    assert losses[-1] < losses[0] - 0.1, losses
    prompt = torch.randint(0, 64, (2, 7))
    tokens, logits = greedy_with_logits(model, prompt)
    merged_tokens, merged_logits = greedy_with_logits(model.merge_and_unload(), prompt)
    assert torch.equal(tokens, merged_tokens)
    torch.testing.assert_close(logits, merged_logits, rtol=1e-4, atol=1e-4)
