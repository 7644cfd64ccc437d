"""The per-layer comparison (mossnet.convert.report): the teacher's activations are captured at
the right places (checked against the teacher's own modules and outputs), the error is the
documented ratio, padding is excluded, and the student's outputs keep their gradients (the
attention-transfer distillation loss is built on them)."""

from __future__ import annotations

import math

import torch

from mossnet.convert.llama import mossnet_config_for
from mossnet.convert.pipeline import build_student
from mossnet.convert.report import capture_teacher, layer_errors, mixer_outputs, relative_error


def test_capture_matches_the_teachers_own_computation(make_teacher):
    teacher, _ = make_teacher(save=False)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 15))
    acts = capture_teacher(teacher, ids, heads=True)
    with torch.no_grad():
        hidden = teacher(ids, output_hidden_states=True).hidden_states  # embeddings, then after each layer
        for i, layer in enumerate(teacher.model.layers):
            assert torch.equal(acts.inputs[i], hidden[i])
            after_attention = acts.inputs[i] + acts.attention[i]
            after_layer = after_attention + layer.mlp(layer.post_attention_layernorm(after_attention))
            if i + 1 < len(teacher.model.layers):
                torch.testing.assert_close(after_layer, hidden[i + 1], rtol=1e-5, atol=1e-5)
            heads = acts.heads[i]
            assert heads.shape == (2, 15, teacher.config.num_attention_heads, teacher.config.head_dim)
            torch.testing.assert_close(layer.self_attn.o_proj(heads.flatten(2)), acts.attention[i])


def test_relative_error_formula_and_padding():
    target = torch.randn(2, 6, 5)
    assert math.isclose(float(relative_error(target * 1.25, target)), 0.25, rel_tol=1e-6)
    assert float(relative_error(target, target)) == 0.0
    assert math.isclose(float(relative_error(torch.zeros_like(target), target)), 1.0, rel_tol=1e-6)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :3] = 0
    wild = target.clone()
    wild[0, :3] += 100.0  # only at padding
    assert float(relative_error(wild, target, mask)) == 0.0


def test_layer_errors_and_gradients(make_teacher):
    teacher, _ = make_teacher(save=False)
    cfg = mossnet_config_for(teacher.config, teacher.config.num_attention_heads, "all")
    student = build_student(teacher, cfg, seed=0)
    ids = torch.randint(0, teacher.config.vocab_size, (2, 12))
    errors = layer_errors(teacher, student, ids)
    assert len(errors) == 2 and all(0 < e < 10 for e in errors)

    acts = capture_teacher(teacher, ids)
    outputs = mixer_outputs(student, acts.inputs)
    for block, h, out, err, target in zip(student.model.layers, acts.inputs, outputs, errors, acts.attention):
        with torch.no_grad():
            torch.testing.assert_close(out, block.mixer(block.mixer_norm(h))[0])
        assert math.isclose(float(relative_error(out.detach(), target)), err, rel_tol=1e-5)
    loss = sum(relative_error(o, a) ** 2 for o, a in zip(outputs, acts.attention))
    loss.backward()
    mixer = student.model.layers[0].mixer
    assert mixer.norm_weight.grad.abs().max() > 0 and mixer.in_proj.grad.abs().max() > 0
    assert student.model.embed_tokens.weight.grad is None  # teacher inputs: nothing upstream trains
    assert all(p.grad is None for p in teacher.parameters())


def test_padding_is_left_out(make_teacher):
    """With a left-padded row, the error of each layer is that of the unpadded tokens alone."""
    teacher, _ = make_teacher(save=False)
    cfg = mossnet_config_for(teacher.config, teacher.config.num_attention_heads, "all")
    student = build_student(teacher, cfg, seed=0)
    ids = torch.randint(1, teacher.config.vocab_size, (1, 10))
    alone = layer_errors(teacher, student, ids)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], dim=1)
    with_padding = layer_errors(teacher, student, padded, mask)
    for a, b in zip(alone, with_padding):
        assert math.isclose(a, b, rel_tol=1e-4), (a, b)
