"""MossNet as a Hugging Face model: ``MossNetModel`` and ``MossNetForCausalLM`` (spec sections 1, 4, 6).

    embedding -> n_layers x [ h += MoSSE(RMSNorm(h)); h += MoEMLP(RMSNorm(h)) ] -> RMSNorm -> LM head

The residual stream is kept in fp32. Generation uses :class:`MossNetCache` (conv windows and
per-expert SSM states, constant size); a prompt is prefilled with the chunked scan (in blocks of
``config.prefill_block_size`` tokens) and every new token enters each block's ``forward`` with
``decode=True``, which runs the one-token step touching only the routed experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...execution import ExecutionPolicy, may_read_back
from ...layers.moe_mlp import MoEMLP
from ...layers.mosse import MoSSE
from ...layers.norm import RMSNorm
from ...layers.router import RouterReport
from ...layers.sequence_layout import SequenceLayout
from .block import MossNetBlock
from .cache import MossNetCache
from .cuda_graph_decode import graph_decode, graph_decode_applicable
from .cuda_graph_prefill import graph_prefill, graph_prefill_applicable
from .remote_code import write_shims
from .configuration_mossnet import MossNetConfig
from .generation import MossNetGenerationMixin

@dataclass
class MossNetModelOutput(ModelOutput):
    """last_hidden_state: (batch, T, D). cache: the updated :class:`MossNetCache` (if used).
    router_reports: one :class:`RouterReport` per router, named ``layers.{i}.mixer|mlp``."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: MossNetCache | None = None
    hidden_states: tuple | None = None
    router_reports: dict | None = None


@dataclass
class MossNetCausalLMOutput(ModelOutput):
    """loss: cross-entropy + aux_loss (what to backpropagate). lm_loss: cross-entropy alone.
    aux_loss: router_aux_loss_coef * L_aux + router_z_loss_coef * L_z (spec section 4); None
    when the call fills or advances a generation cache without labels, gradients or router
    statistics (generation never reads it).
    router_load: {router name: (E,) tokens per expert} and router_logits: {name: (n, E)},
    when ``output_router_stats=True``."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    cache: MossNetCache | None = None
    hidden_states: tuple | None = None
    router_load: dict | None = None
    router_logits: dict | None = None


class MossNetPreTrainedModel(PreTrainedModel):
    config_class = MossNetConfig
    config: MossNetConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MossNetBlock"]
    _is_stateful = True
    # Numerically sensitive parameters stay fp32 when the model is loaded in bf16/fp16.
    _keep_in_fp32_modules_strict = ["A_log", "dt_bias", "mixer.D", "norm", "router"]
    _keep_in_fp32_modules = _keep_in_fp32_modules_strict

    def fills_cache(self, use_cache: bool | None) -> bool:
        """A call's ``use_cache``, resolved: as given, else the config's in eval mode only."""
        return use_cache if use_cache is not None else (self.config.use_cache and not self.training)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus the shim modules that config.json's
        ``auto_map`` names (``remote_code.py``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_shims(save_directory)

    @staticmethod
    def _finalize_model_loading(model, load_config, loading_info):
        # transformers 5 raises on a shape mismatch with only "look at the above report" (the
        # tensor names are in a logged table, hidden at lower verbosity). Name them in the error.
        mismatched = getattr(loading_info, "mismatched_keys", None)
        if mismatched and not getattr(load_config, "ignore_mismatched_sizes", False):
            details = "; ".join(
                f"{key}: checkpoint {tuple(ckpt)} vs model {tuple(ours)}" for key, ckpt, ours in sorted(mismatched)
            )
            raise RuntimeError(
                f"{type(model).__name__}: checkpoint tensors do not match the config's shapes: {details}. "
                "Check config.json against the weights (or pass ignore_mismatched_sizes=True to re-initialise them)."
            )
        return PreTrainedModel._finalize_model_loading(model, load_config, loading_info)

    @torch.no_grad()
    def _init_weights(self, module):
        # transformers.initialization, never nn.init or in-place tensor ops: its functions skip
        # tensors already loaded by from_pretrained (transformers 5.0-5.12 call this after
        # loading too). tests/models/test_save_load.py checks that every tensor reloads exactly.
        std = self.config.initializer_range
        if isinstance(module, MoSSE):
            module.reset_parameters(self.config)
        elif isinstance(module, MoEMLP):
            if module.n_experts > 1:
                init.normal_(module.gate_up, std=std)
                init.normal_(module.down, std=self._residual_std())
                init.normal_(module.router.weight, std=std)
        elif isinstance(module, nn.Linear):
            is_down = module.in_features == self.config.mlp_hidden_dim and module.out_features == self.config.d_model
            init.normal_(module.weight, std=self._residual_std() if is_down else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)

    def _residual_std(self) -> float:
        std = self.config.initializer_range
        return std / (2 * self.config.n_layers) ** 0.5 if self.config.rescale_residual else std

    @staticmethod
    def no_weight_decay_keys() -> tuple[str, ...]:
        """Name fragments of parameters that AdamW must not decay: decay rates, skip weights,
        step-size biases, norms, conv biases and embeddings (weight decay on them hurts SSMs)."""
        return ("A_log", "dt_bias", "mixer.D", "norm", "conv_bias", "embed_tokens", "bias")


@torch.compiler.disable  # the host reads end a compiled graph once here, not twice
def _check_id_range(input_ids: torch.Tensor, vocab_size: int) -> None:
    lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one host read, not two
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocabulary (vocab_size={vocab_size}); "
                         f"valid ids are 0..{vocab_size - 1}")


class MossNetModel(MossNetPreTrainedModel):
    """The MossNet backbone (no LM head)."""

    def __init__(self, config: MossNetConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(MossNetBlock(config, i) for i in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps)
        self.gradient_checkpointing = False
        # How this model executes (scan, expert matmuls, Triton, decode graph, id checks): built
        # once from the config and the environment, passed down to every layer.
        self.execution_policy = ExecutionPolicy.build(config)
        self.post_init()

    @property
    def validate_token_ids(self) -> bool:
        """The CUDA token-id range check (a host read): ``execution_policy.validate_token_ids``."""
        return self.execution_policy.validate_token_ids

    @validate_token_ids.setter
    def validate_token_ids(self, value: bool) -> None:
        self.execution_policy = self.execution_policy.replace(validate_token_ids=value)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def check_token_ids(self, input_ids: torch.Tensor, policy: ExecutionPolicy | None = None) -> None:
        """Raise a ValueError naming an out-of-range id. On CUDA the check reads min/max back
        (a host sync): it is skipped inside a compiled region or a CUDA graph capture, and when
        the policy's ``validate_token_ids`` is False (for callers whose data pipeline checks
        ids). CPU inputs are always checked."""
        policy = self.execution_policy if policy is None else policy
        if input_ids.is_cuda and (not policy.validate_token_ids or not may_read_back(input_ids)):
            return
        if input_ids.numel() == 0:
            return
        _check_id_range(input_ids, self.config.vocab_size)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: MossNetCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_stats: bool = False,
        return_dict: bool | None = None,
        execution_policy: ExecutionPolicy | None = None,
        **kwargs,
    ) -> MossNetModelOutput:
        """input_ids: (batch, T) or inputs_embeds: (batch, T, D). attention_mask: (batch, T),
        0 = padding. position_ids: (batch, T) restarting at 0 at packed document starts.
        cache: continue from (and update) a :class:`MossNetCache`. execution_policy: how to
        execute this call (None: ``self.execution_policy``)."""
        policy = self.execution_policy if execution_policy is None else execution_policy
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("MossNetModel: pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"MossNetModel: input_ids must be (batch, T), got shape {tuple(input_ids.shape)}")
            if input_ids.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"MossNetModel: input_ids must be an integer tensor, got {input_ids.dtype}")
            self.check_token_ids(input_ids, policy)
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.d_model:
            raise ValueError(
                f"MossNetModel: inputs_embeds must be (batch, T, {self.config.d_model}), got {tuple(inputs_embeds.shape)}"
            )
        batch, T = inputs_embeds.shape[:2]
        if attention_mask is not None and attention_mask.shape != (batch, T):
            raise ValueError(f"MossNetModel: attention_mask must be (batch, T) = {(batch, T)}, got {tuple(attention_mask.shape)}")
        use_cache = self.fills_cache(use_cache)
        if use_cache and cache is None:
            cache = MossNetCache(self.config, batch, device=inputs_embeds.device)
        if cache is not None and cache.batch_size != batch:
            raise ValueError(f"MossNetModel: cache holds batch {cache.batch_size} but the input has batch {batch}")
        layout = SequenceLayout.build(batch, T, attention_mask, position_ids)

        if cache is not None and T == 1 and attention_mask is None and position_ids is None:
            return self._decode_step(inputs_embeds[:, 0], cache, output_hidden_states, policy)

        h = inputs_embeds.float()
        all_hidden = [] if output_hidden_states else None
        reports: dict[str, RouterReport] = {}
        # A fresh cache holds zeros, which the layers start from when handed no state: nothing to
        # scatter into the segments (a few launches per layer of the prefill).
        carried = cache is not None and cache.seen_tokens > 0
        for i, block in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(h)
            conv, ssm = (cache.conv_states[i], cache.ssm_states[i]) if carried else (None, None)
            h, mixer_report, mlp_report, states = block(h, layout, conv, ssm, cache is not None, policy=policy)
            if states is not None:
                cache.conv_states[i].copy_(states[0])
                cache.ssm_states[i].copy_(states[1])
            if mixer_report is not None:
                reports[f"layers.{i}.mixer"] = mixer_report
            if mlp_report is not None:
                reports[f"layers.{i}.mlp"] = mlp_report
        h = self.norm_f(h)
        if all_hidden is not None:
            all_hidden.append(h)
        if cache is not None:
            cache.seen_tokens += T
        return MossNetModelOutput(
            last_hidden_state=h, cache=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            router_reports=reports,
        )

    def _decode_step(self, embeds: torch.Tensor, cache: MossNetCache, output_hidden_states,
                     policy: ExecutionPolicy | None = None) -> MossNetModelOutput:
        """One token per row: embeds (batch, D) -> last_hidden_state (batch, 1, D); the cache is
        advanced in place. Each block runs its ``forward`` with ``decode=True``."""
        policy = self.execution_policy if policy is None else policy
        h = embeds.float()[:, None]
        all_hidden = [] if output_hidden_states else None
        for i, block in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(h)
            h = block(h, None, cache.conv_states[i], cache.ssm_states[i], decode=True, policy=policy)[0]
        h = self.norm_f(h)
        if all_hidden is not None:
            all_hidden.append(h)
        cache.seen_tokens += 1
        return MossNetModelOutput(
            last_hidden_state=h, cache=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None, router_reports={},
        )


class MossNetForCausalLM(MossNetPreTrainedModel, MossNetGenerationMixin):
    """MossNet with a language-modelling head (tied to the embedding by default)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MossNetConfig):
        super().__init__(config)
        self.model = MossNetModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    @property
    def execution_policy(self) -> ExecutionPolicy:
        """How this model executes (:class:`~mossnet.execution.ExecutionPolicy`); the backbone's."""
        return self.model.execution_policy

    @execution_policy.setter
    def execution_policy(self, policy: ExecutionPolicy) -> None:
        self.model.execution_policy = policy

    @property
    def cuda_graph_decode(self) -> bool:
        """One-token steps on CUDA (eval, no grad) replay a captured CUDA graph
        (``cuda_graph_decode.py``); set False to run them eagerly. ``execution_policy.decode_graph``."""
        return self.execution_policy.decode_graph

    @cuda_graph_decode.setter
    def cuda_graph_decode(self, value: bool) -> None:
        self.execution_policy = self.execution_policy.replace(decode_graph=value)

    @property
    def cuda_graph_compile(self) -> bool:
        """Run the captured decode step through torch.compile first. ``execution_policy.decode_graph_compile``."""
        return self.execution_policy.decode_graph_compile

    @cuda_graph_compile.setter
    def cuda_graph_compile(self, value: bool) -> None:
        self.execution_policy = self.execution_policy.replace(decode_graph_compile=value)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: MossNetCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_stats: bool = False,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        execution_policy: ExecutionPolicy | None = None,
        **kwargs,
    ) -> MossNetCausalLMOutput:
        """labels: (batch, T), shifted inside (predict token t+1 at t); -100 and padding are
        ignored. Returns loss = cross-entropy + aux_loss when labels are given.

        logits_to_keep: logits of the last this many positions only (0 = all); ``generate``
        passes 1, so a prompt never builds (T, vocab) logits.

        A prompt longer than ``config.prefill_block_size`` that fills a cache without gradients
        (no labels, no packed ``position_ids``, no hidden states or router statistics asked)
        runs in blocks of that many tokens through the cache (:meth:`_prefill_in_blocks`): the
        same result up to float rounding, with memory independent of the prompt's length.
        Router statistics are per block then, so ``aux_loss`` is None.

        execution_policy: how to execute this call (None: ``self.execution_policy``); a one-token
        step on CUDA replays a captured graph when its ``decode_graph`` allows (``generate`` does),
        and so does a prompt of a recurring length when its ``prefill_graph`` allows
        (``cuda_graph_prefill.py`` says when).
        """
        policy = self.execution_policy if execution_policy is None else execution_policy
        if graph_decode_applicable(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, labels,
                                   output_hidden_states, output_router_stats, logits_to_keep, policy):
            logits = graph_decode(self, input_ids, cache, policy)
            return MossNetCausalLMOutput(logits=logits, cache=cache)
        if graph_prefill_applicable(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache,
                                    labels, output_hidden_states, output_router_stats, logits_to_keep, policy):
            captured = graph_prefill(self, input_ids, attention_mask, cache, policy)
            if captured is not None:  # None: the first prompt of its bucket runs eagerly below
                return MossNetCausalLMOutput(logits=captured[0], cache=captured[1])
        if self._prefills_in_blocks(input_ids, inputs_embeds, position_ids, cache, use_cache, labels,
                                    output_hidden_states, output_router_stats):
            h, cache = self._prefill_in_blocks(input_ids, inputs_embeds, attention_mask, cache, logits_to_keep, policy)
            logits = self.lm_head(h.to(self.lm_head.weight.dtype)).float()
            return MossNetCausalLMOutput(logits=logits, cache=cache)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
            output_hidden_states=output_hidden_states, execution_policy=policy,
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h.to(self.lm_head.weight.dtype)).float()

        # A cache filled without gradients or labels is generation's prefill: nothing reads the
        # router losses there, so they are not computed (a dozen launches per router).
        generating = out.cache is not None and labels is None and not output_router_stats and not torch.is_grad_enabled()
        aux_loss = None if generating else self.router_loss(out.router_reports)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = self.lm_loss(logits, labels, attention_mask)
            loss = lm_loss + aux_loss
        router_load = router_logits = None
        if output_router_stats:
            router_load = {name: r.load for name, r in out.router_reports.items()}
            router_logits = {name: r.logits for name, r in out.router_reports.items()}
        return MossNetCausalLMOutput(
            loss=loss, logits=logits, lm_loss=lm_loss, aux_loss=aux_loss, cache=out.cache,
            hidden_states=out.hidden_states, router_load=router_load, router_logits=router_logits,
        )

    def _prefills_in_blocks(self, input_ids, inputs_embeds, position_ids, cache, use_cache, labels,
                            output_hidden_states, output_router_stats) -> bool:
        """A long prompt filling a cache for generation, with nothing asked that needs one pass.
        With gradients on, blocks would save nothing (autograd keeps every block's activations)."""
        tokens = input_ids if input_ids is not None else inputs_embeds
        block = self.config.prefill_block_size
        fills = cache is not None or self.fills_cache(use_cache)
        return bool(
            tokens is not None and tokens.dim() >= 2 and 0 < block < tokens.shape[1]
            and fills and labels is None and position_ids is None
            and not output_hidden_states and not output_router_stats and not torch.is_grad_enabled()
        )

    def _prefill_in_blocks(self, input_ids, inputs_embeds, attention_mask, cache, logits_to_keep, policy):
        """The prompt in blocks of ``config.prefill_block_size`` tokens, each continuing from the
        cache the previous one left (the chunked prefill that export and the benchmarks use).

        Only one block's activations exist at a time, and only the hidden states of the last
        ``logits_to_keep`` positions are kept (all when 0), so memory does not grow with T.
        Returns (h (batch, min(T, logits_to_keep) or T, D), the filled cache).
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        T, block = tokens.shape[1], self.config.prefill_block_size
        first_kept = max(T - logits_to_keep, 0) if logits_to_keep else 0
        kept = []
        for start in range(0, T, block):
            part = slice(start, min(start + block, T))
            out = self.model(
                input_ids=None if input_ids is None else input_ids[:, part],
                inputs_embeds=None if inputs_embeds is None else inputs_embeds[:, part],
                attention_mask=None if attention_mask is None else attention_mask[:, part],
                cache=cache, use_cache=True, execution_policy=policy,
            )
            cache = out.cache
            if part.stop > first_kept:
                kept.append(out.last_hidden_state[:, max(first_kept - start, 0):].clone())
            del out
        return torch.cat(kept, dim=1), cache

    def lm_loss(self, logits, labels, attention_mask=None) -> torch.Tensor:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels must be (batch, T) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        shifted = labels[:, 1:]
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100)

    def router_loss(self, reports: dict) -> torch.Tensor:
        """Mean over routers of L_aux and L_z, weighted by the config's coefficients."""
        device = self.lm_head.weight.device
        if not reports:
            return torch.zeros((), device=device)
        aux = torch.stack([r.aux for r in reports.values()]).mean()
        z = torch.stack([r.z for r in reports.values()]).mean()
        return self.config.router_aux_loss_coef * aux + self.config.router_z_loss_coef * z
