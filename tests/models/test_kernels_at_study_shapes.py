"""Each decomposition variant (``mossnet.studies.decomposition``) at the GPU study's real head
sizes (P = 32, 64 or 128; N = 14 or 32; shared B/C; shared conv; ``state_update="all"``), one
layer, through every Triton kernel (``fused_ops="triton"``, ``scan_impl="triton"``) against the
PyTorch references: loss and every gradient, fp32.

On 2026-12-07 one run of such a model died of an illegal memory access on an H100 (RESULTS.md,
"The fault"); these are the shapes it ran. Under ``TRITON_INTERPRET=1`` the bounds check of
tests/triton_bounds.py also watches every access. Skipped without CUDA or the interpreter."""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE

from mossnet.execution import ExecutionPolicy

pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA, or TRITON_INTERPRET=1 for the Triton interpreter")

KERNELS = ExecutionPolicy(fused_ops="triton", scan_impl="triton", triton_autotune=False)
REFERENCE = ExecutionPolicy(fused_ops="reference", scan_impl="chunked")


def _loss_and_grads(model, ids, policy):
    model.execution_policy = policy
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("letter", list("ABCDEFGH"))
def test_a_study_variant_through_the_kernels_equals_its_references(letter):
    from mossnet.models.mossnet import MossNetForCausalLM
    from mossnet.studies.arch_configs import reference_config
    from mossnet.studies.decomposition import GPU_MODEL, variant_config

    config = variant_config(letter, reference_config("tiny", 256, dict(GPU_MODEL, n_layers=1)))
    model = MossNetForCausalLM(config).to(DEVICE)
    ids = torch.randint(0, config.vocab_size, (2, 70), device=DEVICE)  # a whole chunk of 64 and a partial one
    loss, grads = _loss_and_grads(model, ids, KERNELS)
    ref_loss, ref_grads = _loss_and_grads(model, ids, REFERENCE)
    assert torch.isfinite(loss) and abs(float(loss - ref_loss)) < 1e-6 * abs(float(ref_loss))
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        r = ref_grads[name].double()
        err = float((g.double() - r).norm() / r.norm().clamp_min(1e-30))
        assert err < 1e-4, f"{name}: relative error {err:.2e}"  # dt_bias sums ddt over tokens: ~3e-5
