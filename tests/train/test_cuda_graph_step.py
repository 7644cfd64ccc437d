"""The CUDA-graph training step (``train/cuda_graph_step.py``) and ``--cuda-graph`` in the trainer.

CPU: the options and their errors, the tensor learning rate, and optimizer state moving between
a captured run and an eager one. GPU (skipped without CUDA): the replayed step equals the eager
step (losses and weights, with an lr schedule, accumulation and clipping), a non-finite step is
not applied, and the trainer's ``--cuda-graph`` run matches its eager run and resumes eagerly.
"""

from __future__ import annotations

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.train.cuda_graph_step import CapturedTrainStep, CaptureError, make_capturable
from mossnet.errors import DeviceError
from mossnet.train.loop import train
from mossnet.train.step import lm_and_aux_loss
from mossnet.train.optim import float_learning_rates, restore_implementation, set_lr

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def tiny_model(device="cpu", **overrides) -> MossNetForCausalLM:
    torch.manual_seed(0)
    cfg = MossNetConfig.from_preset("tiny", n_layers=2, d_model=64, vocab_size=256, **overrides)
    model = MossNetForCausalLM(cfg).to(device).train()
    model.model.validate_token_ids = False
    return model


def model_loss(model):
    def loss_fn(ids, labels):
        out = model(input_ids=ids, output_router_stats=True)
        ce, aux = lm_and_aux_loss(out, labels)
        return (ce + aux if aux is not None else ce), ce, aux, out.router_load or {}

    return loss_fn


# ---------------------------------------------------------------------------- CPU
def test_cuda_graph_and_compile_are_exclusive(make_cfg):
    with pytest.raises(ValueError, match="cuda_graph and compile are exclusive"):
        make_cfg(cuda_graph=True, compile=True).validate()


@pytest.mark.skipif(CUDA, reason="checks the CPU error")
def test_cuda_graph_on_cpu_is_a_clear_error(make_cfg):
    with pytest.raises(DeviceError, match="--cuda-graph needs a CUDA device.*--no-cuda-graph"):
        train(make_cfg(cuda_graph=True, device="cpu"))


def test_captured_step_refuses_a_cpu_model():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(CaptureError, match="CUDA device"):
        CapturedTrainStep(model, opt, model_loss(model))


def test_captured_step_refuses_other_optimizers():
    model = tiny_model()
    with pytest.raises(CaptureError, match="AdamW, got SGD"):
        CapturedTrainStep(model, torch.optim.SGD(model.parameters(), lr=1e-3), model_loss(model))


def test_set_lr_writes_a_tensor_learning_rate_in_place():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=1e-3)
    set_lr(opt, 2e-3)
    assert opt.param_groups[0]["lr"] == 2e-3
    make_capturable(opt, torch.zeros(()))
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and lr.item() == pytest.approx(2e-3)
    set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(5e-4)  # same tensor: a graph reads it


def test_optimizer_state_moves_between_captured_and_eager_runs():
    """A captured run saves fused/capturable flags and tensor learning rates; an eager run that
    loads them gets its own flags and float learning rates back (and the reverse)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    captured = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    captured.step()
    make_capturable(captured, torch.zeros(()))
    saved = float_learning_rates(captured.state_dict())
    assert isinstance(saved["param_groups"][0]["lr"], float)
    assert isinstance(captured.param_groups[0]["lr"], torch.Tensor)  # the live optimizer is untouched
    assert captured.state[p]["step"].dtype == torch.float32

    q = torch.nn.Parameter(p.detach().clone())
    eager = torch.optim.AdamW([q], lr=1e-3)
    eager.load_state_dict(captured.state_dict())  # the raw state: tensor lr, fused, capturable
    restore_implementation(eager)
    group = eager.param_groups[0]
    assert isinstance(group["lr"], float) and not group["capturable"] and not group["fused"]
    q.grad = torch.randn_like(q)
    eager.step()  # runs with the restored flags


# ---------------------------------------------------------------------------- GPU
def _eager_reference(model, opt, batches, lrs, clip, accum):
    losses = []
    for (ids, labels), lr in zip(batches, lrs):
        set_lr(opt, lr)
        total = 0.0
        for i in range(accum):
            out = model(input_ids=ids[i], output_router_stats=True)
            ce, aux = lm_and_aux_loss(out, labels[i])
            loss = ce + aux if aux is not None else ce
            (loss / accum).backward()
            total += loss.item() / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses


def _batches(n, accum, vocab, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (accum, 3, 37), generator=g)
        out.append((ids.to(device), torch.roll(ids, -1, dims=-1).to(device)))
    return out


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_captured_step_equals_eager_step(state_update):
    """fp32, 6 steps (2 eager warm-up, capture, 3 replays) with a changing lr, 2 micro-batches and
    clipping: the same losses and weights as plain eager training with fused AdamW."""
    accum, clip = 2, 0.5
    lrs = [1e-3, 2e-3, 3e-3, 2e-3, 1e-3, 5e-4]
    ref = tiny_model("cuda", state_update=state_update)
    got = tiny_model("cuda", state_update=state_update)
    batches = _batches(len(lrs), accum, ref.config.vocab_size, "cuda")
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=lrs[0], weight_decay=0.1, fused=True)
    want = _eager_reference(ref, ref_opt, batches, lrs, clip, accum)

    opt = torch.optim.AdamW(got.parameters(), lr=lrs[0], weight_decay=0.1)
    step = CapturedTrainStep(got, opt, model_loss(got), grad_clip=clip, warmup_steps=2)
    losses = []
    for (ids, labels), lr in zip(batches, lrs):
        set_lr(opt, lr)
        stats, load = step(ids, labels)
        losses.append(stats[0].item())
        assert torch.isfinite(stats).all() and load and all(v.sum() > 0 for v in load.values())
    assert step.captured
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(want), rtol=2e-4, atol=2e-4)
    for (name, a), b in zip(ref.named_parameters(), got.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")
    init = tiny_model("cuda", state_update=state_update)
    assert any(not torch.equal(a, b) for a, b in zip(init.parameters(), got.parameters()))  # it trained


@pytest.mark.gpu
@gpu
def test_non_finite_step_is_not_applied():
    model = tiny_model("cuda")
    poison = torch.ones((), device="cuda")
    base = model_loss(model)

    def loss_fn(ids, labels):
        loss, ce, aux, load = base(ids, labels)
        return loss * poison, ce, aux, load

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = CapturedTrainStep(model, opt, loss_fn, grad_clip=1.0, warmup_steps=1)
    batches = _batches(4, 1, model.config.vocab_size, "cuda")
    for ids, labels in batches[:2]:  # eager warm-up, then capture + replay
        step(ids, labels)
    before = [p.detach().clone() for p in model.parameters()]
    steps_before = [s["step"].clone() for s in opt.state.values()]
    poison.fill_(float("nan"))
    stats, _ = step(*batches[2])
    assert not torch.isfinite(stats).all()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(a, s["step"]) for a, s in zip(steps_before, opt.state.values()))
    poison.fill_(1.0)
    stats, _ = step(*batches[3])  # the next good step applies again
    assert torch.isfinite(stats).all()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.gpu
@gpu
def test_captured_step_rejects_a_new_shape():
    model = tiny_model("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = CapturedTrainStep(model, opt, model_loss(model), warmup_steps=1)
    ids, labels = _batches(1, 1, model.config.vocab_size, "cuda")[0]
    step(ids, labels)
    with pytest.raises(ValueError, match="fixed shapes"):
        step(ids[:, :, :10], labels[:, :, :10])


@pytest.mark.gpu
@gpu
def test_trainer_cuda_graph_matches_eager_and_resumes_eagerly(make_cfg):
    """bf16 autocast on CUDA: the graph run's losses follow the eager run's (the cast cache is
    off in the graph, so not bit for bit), and its checkpoint resumes without the graph."""
    kw = dict(device="cuda", max_steps=8, grad_accum=2, ckpt_interval=4)
    eager = train(make_cfg("eager", **kw))
    graph = train(make_cfg("graph", cuda_graph=True, **kw))
    assert graph.status == "done" and len(graph.losses) == 8
    torch.testing.assert_close(torch.tensor(graph.losses), torch.tensor(eager.losses), rtol=0, atol=3e-2)
    resumed = train(make_cfg("graph", device="cuda", max_steps=10, grad_accum=2, resume=graph.out,
                             cuda_graph=False))
    assert resumed.status == "done" and len(resumed.losses) == 2
    assert all(torch.isfinite(torch.tensor(resumed.losses)))
