"""How far each converted mixer is from the attention it replaces, on the teacher's own inputs.

For layer l, the teacher's residual stream entering layer l (h_l) goes through the student's
``mixer_norm`` (a copy of the teacher's ``input_layernorm``) and the student's mixer; the result is
compared with the teacher's ``self_attn`` output (after ``o_proj``) on the same tokens:

    error_l = ||o_student,l - o_teacher,l||_F / ||o_teacher,l||_F      over the valid tokens

Each layer is measured in isolation (no error compounds from the layers below). This is the
attention-transfer objective of LoLCATs (arXiv 2410.10254): distillation's ``attention`` stage
minimises the squared numerator, and reuses :func:`capture_teacher` and :func:`mixer_outputs`
for it (the student's outputs keep their autograd graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mossnet.layers.sequence_layout import SequenceLayout


@dataclass
class TeacherActivations:
    """What the teacher computed, per layer l (each a (batch, T, ...) fp32 tensor, detached).

    inputs[l]: the residual stream entering layer l, (batch, T, D).
    attention[l]: the ``self_attn`` output (after ``o_proj``), (batch, T, D).
    heads[l]: the per-head attention outputs ``o_proj`` reads, (batch, T, H, d_h), when asked.
    """

    inputs: list[torch.Tensor]
    attention: list[torch.Tensor]
    heads: list[torch.Tensor] | None = None


@torch.no_grad()
def capture_teacher(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    heads: bool = False) -> TeacherActivations:
    """Run the teacher once over ``input_ids`` (batch, T) and keep every layer's input and
    attention output (and the per-head outputs with ``heads``), through forward hooks."""
    layers = teacher.model.layers
    n = len(layers)
    inputs, attention, per_head = [None] * n, [None] * n, [None] * n
    handles = []

    def keep_input(i):
        def hook(module, args, kwargs):
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).detach().float()
        return hook

    def keep_attention(i):
        def hook(module, args, kwargs, output):
            attention[i] = (output[0] if isinstance(output, tuple) else output).detach().float()
        return hook

    def keep_heads(i, d_h):
        def hook(module, args):
            x = args[0].detach().float()
            per_head[i] = x.view(*x.shape[:-1], -1, d_h)
        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(keep_input(i), with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(keep_attention(i), with_kwargs=True))
            if heads:
                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
                    keep_heads(i, layer.self_attn.head_dim)))
        teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return TeacherActivations(inputs, attention, per_head if heads else None)


def mixer_outputs(student, layer_inputs: list[torch.Tensor], attention_mask: torch.Tensor | None = None,
                  layers: list[int] | None = None, reports: list | None = None) -> list[torch.Tensor]:
    """The student's mixer output on the teacher's layer inputs: for each layer l (all, or
    ``layers``), ``mixer_l(mixer_norm_l(layer_inputs[l]))``, (batch, T, D) fp32. Gradients flow
    into the student's parameters (wrap in ``torch.no_grad()`` to measure only). Each layer's
    router report is appended to ``reports`` when a list is given (distillation's aux loss)."""
    blocks = student.model.layers
    chosen = range(len(blocks)) if layers is None else layers
    outputs = []
    for i in chosen:
        h = layer_inputs[i]
        layout = SequenceLayout.build(h.shape[0], h.shape[1], attention_mask)
        block = blocks[i]
        mixed, report, _ = block.mixer(block.mixer_norm(h), layout)
        outputs.append(mixed.float())
        if reports is not None:
            reports.append(report)
    return outputs


def relative_error(output: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """||output - target|| / ||target|| over the valid tokens (Frobenius norms); a 0-dim tensor.

    output, target: (batch, T, D); attention_mask: (batch, T), 0 = padding."""
    diff = (output.float() - target.float()).pow(2).sum(-1)
    ref = target.float().pow(2).sum(-1)
    if attention_mask is not None:
        keep = attention_mask.to(diff.dtype)
        diff, ref = diff * keep, ref * keep
    return (diff.sum() / ref.sum().clamp_min(torch.finfo(ref.dtype).tiny)).sqrt()


@torch.no_grad()
def layer_errors(teacher, student, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> list[float]:
    """Per-layer relative error of the student's mixers against the teacher's attention, each
    on the teacher's own layer inputs (see the module docstring). input_ids: (batch, T)."""
    acts = capture_teacher(teacher, input_ids, attention_mask)
    outs = mixer_outputs(student, acts.inputs, attention_mask)
    return [float(relative_error(o, a, attention_mask)) for o, a in zip(outs, acts.attention)]
