"""The exact part of the conversion (spec section 8), on a tiny random Llama teacher (2 layers,
4 query heads, 2 key/value heads): copied tensors are bit-identical; each expert's C, B, x
projections reproduce the teacher's q of head h and, through transformers' own ``repeat_kv``,
the k and v that head h reads; W_o^h is the slice of o_proj that reads head h; the written model
loads through AutoModelForCausalLM with every tensor unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import repeat_kv

from mossnet.convert.llama import mossnet_config_for
from mossnet.convert.pipeline import build_student


def student_of(teacher, k=None, state_update="all"):
    cfg = mossnet_config_for(teacher.config, k or teacher.config.num_attention_heads, state_update)
    return build_student(teacher, cfg, seed=0)


@pytest.mark.parametrize("tied", [False, True])
def test_copied_tensors_are_bit_identical(make_teacher, tied):
    teacher, _ = make_teacher(save=False, tie_word_embeddings=tied)
    student = student_of(teacher)
    t, s = teacher.model, student.model
    assert torch.equal(s.embed_tokens.weight, t.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert (student.lm_head.weight.data_ptr() == s.embed_tokens.weight.data_ptr()) == tied
    assert torch.equal(s.norm_f.weight, t.norm.weight)
    assert student.config.rms_norm_eps == teacher.config.rms_norm_eps == 1e-6
    assert s.norm_f.eps == t.norm.variance_epsilon
    for block, layer in zip(s.layers, t.layers):
        assert torch.equal(block.mixer_norm.weight, layer.input_layernorm.weight)
        assert torch.equal(block.mlp_norm.weight, layer.post_attention_layernorm.weight)
        assert block.mixer_norm.eps == layer.input_layernorm.variance_epsilon
        assert block.mlp_norm.eps == layer.post_attention_layernorm.variance_epsilon
        assert block.mixer.eps == layer.input_layernorm.variance_epsilon
        assert block.mlp.n_experts == 1
        assert torch.equal(block.mlp.dense.down.weight, layer.mlp.down_proj.weight)


def test_mlp_computes_the_teachers_mlp(make_teacher):
    """Gate and up are stacked in the order SwiGLU splits them: the functions are equal."""
    teacher, _ = make_teacher(save=False)
    student = student_of(teacher)
    u = torch.randn(3, 7, teacher.config.hidden_size)
    for block, layer in zip(student.model.layers, teacher.model.layers):
        ours = block.mlp(u.reshape(-1, u.shape[-1]))[0].view_as(u)
        torch.testing.assert_close(ours, layer.mlp(u), rtol=1e-6, atol=1e-6)
        assert torch.equal(block.mlp_norm(u), layer.post_attention_layernorm(u))
        assert torch.equal(block.mixer_norm(u), layer.input_layernorm(u))


def test_heads_map_to_experts_in_repeat_kv_order(make_teacher):
    """Expert h: C = q of head h, B and x = k and v that head h reads in the teacher's own
    attention (transformers' repeat_kv of the key/value heads), W_o^h = o_proj's head-h columns."""
    teacher, _ = make_teacher(save=False)
    cfg = teacher.config
    H, G, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert (H, G) == (4, 2)
    student = student_of(teacher)
    u = torch.randn(2, 5, cfg.hidden_size)
    for block, layer in zip(student.model.layers, teacher.model.layers):
        attn, mixer = layer.self_attn, block.mixer
        heads = lambda t: t.view(2, 5, -1, d).transpose(1, 2)  # noqa: E731  (batch, heads, T, d)
        q = heads(attn.q_proj(u))
        k = repeat_kv(heads(attn.k_proj(u)), attn.num_key_value_groups)
        v = repeat_kv(heads(attn.v_proj(u)), attn.num_key_value_groups)
        attn_in = torch.randn(2, 5, H * d)
        for h in range(H):
            z, x, B, C, dt = (u @ mixer.in_proj[h].T).split([d, d, d, d, 1], dim=-1)
            torch.testing.assert_close(C, q[:, h], rtol=0, atol=1e-6)
            torch.testing.assert_close(B, k[:, h], rtol=0, atol=1e-6)
            torch.testing.assert_close(x, v[:, h], rtol=0, atol=1e-6)
            # the output projection of head h alone equals o_proj fed only head h's slice
            alone = torch.zeros_like(attn_in)
            alone[..., h * d:(h + 1) * d] = attn_in[..., h * d:(h + 1) * d]
            torch.testing.assert_close(attn_in[..., h * d:(h + 1) * d] @ mixer.out_proj[h].T, attn.o_proj(alone),
                                       rtol=0, atol=1e-6)
        # and the rows are copies, not near-copies
        assert torch.equal(mixer.in_proj[3, 3 * d:4 * d], attn.q_proj.weight[3 * d:4 * d])
        assert torch.equal(mixer.in_proj[3, 2 * d:3 * d], attn.k_proj.weight[d:2 * d])


def test_config_of_the_converted_model(make_teacher):
    teacher, _ = make_teacher(save=False)
    cfg = student_of(teacher, k=2, state_update="routed").config
    assert (cfg.ssm_experts, cfg.ssm_top_k, cfg.ssm_head_dim, cfg.ssm_state_dim) == (4, 2, 16, 16)
    assert (cfg.mlp_experts, cfg.mlp_top_k, cfg.mlp_hidden_dim) == (1, 1, 96)
    assert (cfg.d_model, cfg.n_layers, cfg.vocab_size) == (64, 2, 320)
    assert cfg.state_update == "routed" and cfg.ssm_z_bias is True


def test_written_model_loads_through_auto_classes_unchanged(make_teacher, calibration_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mossnet.convert import ConvertOptions, convert_teacher

    teacher, directory = make_teacher()
    model_dir = convert_teacher(directory, tmp_path / "run", ConvertOptions(
        calibration_text=str(calibration_file), sequences=2, seq_len=24), log=lambda _: None)
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    assert type(loaded).__name__ == "MossNetForCausalLM"
    # Every saved tensor comes back bit for bit (no re-initialisation after loading).
    saved, state = load_file(model_dir / "model.safetensors"), loaded.state_dict()
    assert saved and all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    assert torch.equal(loaded.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(loaded.lm_head.weight, teacher.lm_head.weight)
    for block, layer in zip(loaded.model.layers, teacher.model.layers):
        assert torch.equal(block.mixer.in_proj[1, 16:32], layer.self_attn.v_proj.weight[:16])
        assert torch.equal(block.mlp.dense.down.weight, layer.mlp.down_proj.weight)
        assert torch.isfinite(block.mixer.A_log).all() and torch.isfinite(block.mixer.norm_weight).all()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    assert torch.isfinite(loaded(ids).logits).all()
