"""``MossNetConfig``: the one config object (a Hugging Face ``PretrainedConfig``).

Every field of spec sections 2-4 is here and validated on construction. Presets are in
:data:`PRESETS`; the README's preset table is checked against the real parameter counts by
``tests/models/test_presets.py``.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from mossnet.errors import ConfigError
from mossnet.execution import SCAN_IMPLS

from .remote_code import AUTO_MAP

STATE_UPDATES = ("routed", "all")
SSM_CONV_PLACEMENTS = ("expert", "shared")

# name -> overrides of the defaults below. Parameter counts (total / active per token) are in
# the README and tested.
PRESETS: dict[str, dict] = {
    # Trains on a 2-core CPU in minutes (the `make demo` model).
    "tiny": dict(
        vocab_size=4096, d_model=128, n_layers=4,
        ssm_experts=4, ssm_top_k=2, ssm_head_dim=32, ssm_state_dim=16,
        mlp_experts=4, mlp_top_k=2, mlp_hidden_dim=256,
    ),
    # ~30M active parameters.
    "small": dict(
        vocab_size=32768, d_model=512, n_layers=8,
        ssm_experts=8, ssm_top_k=2, ssm_head_dim=64, ssm_state_dim=64,
        mlp_experts=8, mlp_top_k=2, mlp_hidden_dim=448,
    ),
    # ~130M total parameters, SmolLM2's vocabulary size.
    "base": dict(
        vocab_size=49152, d_model=576, n_layers=12,
        ssm_experts=8, ssm_top_k=2, ssm_head_dim=64, ssm_state_dim=64,
        mlp_experts=8, mlp_top_k=2, mlp_hidden_dim=512,
    ),
    # ~1B total parameters (~0.32B active), for the cost-against-size benchmark. Four of 16 SSM
    # experts per token: an active value width k * P of 256 at d_model 1536 (base: 128 at 576).
    "large": dict(
        vocab_size=49152, d_model=1536, n_layers=24,
        ssm_experts=16, ssm_top_k=4, ssm_head_dim=64, ssm_state_dim=64,
        mlp_experts=8, mlp_top_k=2, mlp_hidden_dim=896,
    ),
}


class MossNetConfig(PretrainedConfig):
    """Configuration of a MossNet language model.

    Args (sizes):
        vocab_size, d_model, n_layers: vocabulary, residual width D, number of layers.
        ssm_experts (E), ssm_top_k (k), ssm_head_dim (P), ssm_state_dim (N), conv_kernel (K):
            the mixture of state-space experts (spec section 2).
        state_update: "routed" (an expert sees only its tokens) or "all" (every expert sees
            every token, the router only gates the outputs).
        router_renormalize: renormalise the top-k gates to sum to 1 (only when k > 1).
        ssm_z_bias: a per-expert bias on the gate z (zero at init), so that SiLU(z) can start as
            a non-zero constant (a model converted from attention: W_z = 0, bias b gives SiLU(b)).
        ssm_conv_placement: "expert" (each expert's conv over its own sequence, spec section 2.4)
            or "shared" (one conv of u over the full sequence before routing; spec section 7).
        ssm_share_bc: B and C from one projection shared by all experts, convolved over the
            full sequence (spec section 7).
        mlp_experts, mlp_top_k, mlp_hidden_dim, mlp_shared_expert: the SwiGLU MoE-MLP
            (spec section 3); ``mlp_experts=1`` is a dense SwiGLU, ``mlp_experts=0`` no
            channel-mixing block at all (spec section 7; mlp_top_k and mlp_hidden_dim unused).
        router_aux_loss_coef, router_z_loss_coef: loss weights (spec section 4).
    Args (numerics / init):
        rms_norm_eps, initializer_range, dt_min, dt_max, dt_init_floor, A_init_range,
        rescale_residual (scale the residual output projections by 1/sqrt(2 * n_layers)).
    Args (execution; they seed the model's ``ExecutionPolicy``, see ``mossnet.execution``):
        scan_impl: "auto" | "reference" | "chunked" | a GPU fast path; chunk_size: for chunked.
        prefill_block_size: a prompt longer than this is prefilled through the cache in blocks
            of this many tokens, so its memory does not grow with its length (the same result up
            to float rounding); 0 prefills in one pass. See ``MossNetForCausalLM.forward``.

    Example:
        >>> cfg = MossNetConfig.from_preset("tiny", n_layers=2)
        >>> cfg.ssm_experts, cfg.n_layers
        (4, 2)
    """

    model_type = "mossnet"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers"}

    def __init__(
        self,
        vocab_size: int = 4096,
        d_model: int = 128,
        n_layers: int = 4,
        ssm_experts: int = 4,
        ssm_top_k: int = 2,
        ssm_head_dim: int = 32,
        ssm_state_dim: int = 16,
        conv_kernel: int = 4,
        state_update: str = "routed",
        router_renormalize: bool = True,
        ssm_z_bias: bool = False,
        ssm_conv_placement: str = "expert",
        ssm_share_bc: bool = False,
        mlp_experts: int = 4,
        mlp_top_k: int = 2,
        mlp_hidden_dim: int = 256,
        mlp_shared_expert: bool = False,
        router_aux_loss_coef: float = 0.01,
        router_z_loss_coef: float = 1e-3,
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        rescale_residual: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        scan_impl: str = "auto",
        chunk_size: int = 64,
        prefill_block_size: int = 2048,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.ssm_experts = ssm_experts
        self.ssm_top_k = ssm_top_k
        self.ssm_head_dim = ssm_head_dim
        self.ssm_state_dim = ssm_state_dim
        self.conv_kernel = conv_kernel
        self.state_update = state_update
        self.router_renormalize = router_renormalize
        self.ssm_z_bias = ssm_z_bias
        self.ssm_conv_placement = ssm_conv_placement
        self.ssm_share_bc = ssm_share_bc
        self.mlp_experts = mlp_experts
        self.mlp_top_k = mlp_top_k
        self.mlp_hidden_dim = mlp_hidden_dim
        self.mlp_shared_expert = mlp_shared_expert
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.rescale_residual = rescale_residual
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init_floor = dt_init_floor
        self.A_init_range = tuple(A_init_range) if isinstance(A_init_range, (list, tuple)) else A_init_range
        self.scan_impl = scan_impl
        self.chunk_size = chunk_size
        self.prefill_block_size = prefill_block_size
        self.use_cache = use_cache
        # Every saved config names its classes, so tools that never import mossnet can load it
        # (see remote_code.py); the model's save_pretrained writes the modules it names.
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_fields()

    def validate_fields(self) -> None:
        """Raise ConfigError (a ValueError) naming the first impossible field."""
        positive = [
            "vocab_size", "d_model", "n_layers", "ssm_experts", "ssm_top_k", "ssm_head_dim",
            "ssm_state_dim", "conv_kernel", "mlp_top_k", "mlp_hidden_dim", "chunk_size",
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                _fail(f"{name} must be a positive integer, got {value!r}")
        mlp = self.mlp_experts
        if not isinstance(mlp, int) or isinstance(mlp, bool) or mlp < 0:
            _fail(f"mlp_experts must be an integer >= 0 (0 = no channel-mixing block), got {mlp!r}")
        block = self.prefill_block_size
        if not isinstance(block, int) or isinstance(block, bool) or block < 0:
            _fail(f"prefill_block_size must be an integer >= 0 (0 = one pass), got {block!r}")
        if self.ssm_top_k > self.ssm_experts:
            _fail(f"ssm_top_k ({self.ssm_top_k}) must be <= ssm_experts ({self.ssm_experts})")
        if self.mlp_experts > 0 and self.mlp_top_k > self.mlp_experts:
            _fail(f"mlp_top_k ({self.mlp_top_k}) must be <= mlp_experts ({self.mlp_experts})")
        if self.state_update not in STATE_UPDATES:
            _fail(f"state_update must be one of {STATE_UPDATES}, got {self.state_update!r}")
        if self.ssm_conv_placement not in SSM_CONV_PLACEMENTS:
            _fail(f"ssm_conv_placement must be one of {SSM_CONV_PLACEMENTS}, got {self.ssm_conv_placement!r}")
        if self.scan_impl not in SCAN_IMPLS:
            _fail(f"scan_impl must be one of {SCAN_IMPLS}, got {self.scan_impl!r}")
        for name in ("router_renormalize", "ssm_z_bias", "ssm_share_bc", "mlp_shared_expert", "rescale_residual",
                     "use_cache"):
            if not isinstance(getattr(self, name), bool):
                _fail(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.mlp_experts == 0 and self.mlp_shared_expert:
            _fail("mlp_shared_expert needs a channel-mixing block, but mlp_experts is 0 (none); "
                  "use mlp_experts=1 for one dense SwiGLU")
        for name in ("router_aux_loss_coef", "router_z_loss_coef", "initializer_range", "dt_init_floor"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                _fail(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not _finite(self.rms_norm_eps) or self.rms_norm_eps <= 0:
            _fail(f"rms_norm_eps must be a finite number > 0, got {self.rms_norm_eps!r}")
        if not (_finite(self.dt_min) and _finite(self.dt_max) and 0 < self.dt_min <= self.dt_max):
            _fail(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min!r}, dt_max={self.dt_max!r}")
        if (not isinstance(self.A_init_range, tuple) or len(self.A_init_range) != 2
                or not all(_finite(v) for v in self.A_init_range)):
            _fail(f"A_init_range must be two finite numbers, got {self.A_init_range!r}")
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            _fail(f"A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name, None)
            ids = value if isinstance(value, list) else [value]
            if value is not None and not all(isinstance(i, int) and not isinstance(i, bool)
                                             and 0 <= i < self.vocab_size for i in ids):
                _fail(f"{name} must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MossNetConfig":
        """A named size ("tiny", "small", "base", "large") with optional field overrides."""
        if name not in PRESETS:
            _fail(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _fail(message: str):
    raise ConfigError(f"MossNetConfig: {message}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
