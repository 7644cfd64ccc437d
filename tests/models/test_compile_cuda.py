"""torch.compile of the training step on CUDA gives the eager loss and gradients: routed rows
(the packed path) and every-pair rows (``state_update="all"``, the uniform path), with and
without padding. fp32, so the comparison is tight; skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("state_update, k", [("routed", 2), ("all", 4)])
@pytest.mark.parametrize("padded", [False, True])
def test_compiled_step_equals_eager_on_cuda(state_update, k, padded):
    torch._dynamo.reset()
    cfg = MossNetConfig.from_preset("tiny", vocab_size=256, n_layers=2, d_model=64, ssm_experts=4, ssm_top_k=k,
                                    state_update=state_update, ssm_head_dim=16, ssm_state_dim=16, mlp_hidden_dim=64)
    torch.manual_seed(0)
    model = MossNetForCausalLM(cfg).cuda()
    ids = torch.randint(0, 256, (2, 96), device="cuda")
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :13] = 0
    eager = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    eager.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model)(input_ids=ids, attention_mask=mask, labels=ids).loss
    compiled.backward()
    assert abs(compiled.item() - eager.item()) < 1e-4 * max(1.0, abs(eager.item()))
    for n, p in model.named_parameters():
        if n in ref:
            scale = ref[n].abs().max().clamp_min(1e-6)
            assert ((p.grad - ref[n]).abs().max() / scale).item() < 1e-3, n
