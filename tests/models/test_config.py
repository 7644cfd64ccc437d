"""``MossNetConfig``: fields, presets, Hugging Face round trips and validation (spec section 6).
(Bad values are in test_bad_input.py; parameter counts of the presets in test_presets.py.)"""

from __future__ import annotations

import pytest
from transformers import AutoConfig

import mossnet.models.mossnet  # noqa: F401  (registers the Auto classes)
from mossnet import MossNetConfig
from mossnet.models.mossnet import PRESETS


def test_defaults_follow_the_spec():
    cfg = MossNetConfig()
    assert cfg.model_type == "mossnet"
    assert cfg.state_update == "routed" and cfg.router_renormalize is True
    assert cfg.conv_kernel == 4
    assert cfg.router_aux_loss_coef == 0.01 and cfg.router_z_loss_coef == 1e-3
    assert cfg.mlp_shared_expert is False and cfg.tie_word_embeddings is True
    # Hugging Face's generic names map onto ours.
    assert cfg.hidden_size == cfg.d_model and cfg.num_hidden_layers == cfg.n_layers


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(name):
    cfg = MossNetConfig.from_preset(name)
    for key, value in PRESETS[name].items():
        assert getattr(cfg, key) == value
    cfg2 = MossNetConfig.from_preset(name, n_layers=1, state_update="all")
    assert cfg2.n_layers == 1 and cfg2.state_update == "all"


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        MossNetConfig.from_preset("huge")


def test_dict_and_json_round_trip(tmp_path):
    cfg = MossNetConfig.from_preset("tiny", state_update="all", mlp_shared_expert=True, A_init_range=(2.0, 8.0))
    again = MossNetConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MossNetConfig)
    assert loaded.state_update == "all" and loaded.mlp_shared_expert is True
    assert tuple(loaded.A_init_range) == (2.0, 8.0)
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop(loaded.to_dict()) == drop(cfg.to_dict())


def test_auto_config_for_model_type():
    cfg = AutoConfig.for_model("mossnet", d_model=32)
    assert isinstance(cfg, MossNetConfig) and cfg.d_model == 32


def test_single_head_baseline_is_valid():
    """ssm_experts=1, ssm_top_k=1 (the Mamba-like baseline) and mlp_experts=1 (dense MLP)."""
    cfg = MossNetConfig(ssm_experts=1, ssm_top_k=1, mlp_experts=1, mlp_top_k=1)
    assert cfg.ssm_experts == 1 and cfg.mlp_experts == 1


@pytest.mark.parametrize("field,value,needle", [
    ("scan_impl", "bogus", "scan_impl"),
    ("dt_min", float("nan"), "dt_min"),
    ("rms_norm_eps", float("inf"), "rms_norm_eps"),
    ("router_renormalize", "yes", "router_renormalize"),
    ("A_init_range", 3.0, "A_init_range"),
    ("eos_token_id", 10_000, "eos_token_id"),
    ("n_layers", True, "n_layers"),
])
def test_every_field_is_validated(field, value, needle):
    from mossnet.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        MossNetConfig(**{field: value})


def test_scan_impl_names_match_the_op():
    """Every name the config accepts is one mosse_scan accepts, and vice versa."""
    import torch

    from mossnet.models.mossnet.configuration_mossnet import SCAN_IMPLS
    from mossnet.ops import mosse_scan

    x = torch.zeros(1, 3, 1, 2)
    for impl in SCAN_IMPLS:
        if impl == "triton":
            continue  # needs CUDA tensors; registered by ops/mosse/__init__.py from ops/mosse/triton/
        mosse_scan(x, torch.zeros(1, 3, 1), torch.zeros(1), torch.zeros(1, 3, 1, 2), torch.zeros(1, 3, 1, 2), impl=impl)
    with pytest.raises(Exception):
        mosse_scan(x, torch.zeros(1, 3, 1), torch.zeros(1), torch.zeros(1, 3, 1, 2), torch.zeros(1, 3, 1, 2), impl="bogus")
    from mossnet.ops.mosse import interface

    assert set(interface._FAST_PATHS) <= set(SCAN_IMPLS)  # "triton" registers itself only where Triton exists
