"""One interface over the compared model families: ``prefill(ids)`` fills the cache and returns
the first greedy token (1, 1); ``decode(token)`` takes one step through the cache and returns the
next. ``build_runner`` maps a benchmark model name to its model and runner, on a device."""

from __future__ import annotations

import inspect

from mossnet.bench.models import (
    cast_for_inference,
    converted_mossnet,
    load_smollm2,
    mamba2_model,
    mossnet_model,
    smollm2_random,
    tiny_llama,
)

MODELS = ("mossnet", "smollm2", "smollm2-static", "mamba2")
# The MossNets `mossnet convert` makes of SmolLM2-135M (random weights, same speed).
CONVERTED_MODELS = ("mossnet-smollm2-dense", "mossnet-smollm2-routed")
# A MossNet name + "-eager": its decode without the captured CUDA graph (generate's default on
# CUDA replays one); CUDA only, since every CPU decode step is eager.
EAGER_SUFFIX = "-eager"
EAGER_MODELS = tuple(m + EAGER_SUFFIX for m in ("mossnet", *CONVERTED_MODELS))
OPTIONAL_MODELS = ("mossnet-compiled", *CONVERTED_MODELS, *EAGER_MODELS)
RECURRENT_MODELS = ("mossnet", "mossnet-compiled", "mamba2", *CONVERTED_MODELS, *EAGER_MODELS)  # + --extra-contexts
# The models whose shape or weights come from SmolLM2 (--smollm2-weights).
SMOLLM2_MODELS = ("smollm2", "smollm2-static", *CONVERTED_MODELS, *(m + EAGER_SUFFIX for m in CONVERTED_MODELS))


WARMUP_HEADROOM = 2  # static-cache slots beyond the prompt and the timed decode steps


def _cache_kw(model) -> str:
    """transformers renamed ``past_key_values`` / ``cache_params`` to ``cache`` (5.2x)."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values", "cache_params"):
        if name in params:
            return name
    return "cache"


def _out_cache(out):
    for name in ("cache", "past_key_values", "cache_params"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


_STATE_FIELDS = ("keys", "values", "conv_states", "recurrent_states", "ssm_states")


def cache_bytes(cache) -> int | None:
    """Bytes of a decode cache: MossNet's recurrent state, or the tensors of a transformers cache
    (keys and values, a static cache at its full length; a recurrent layer's conv and SSM
    states). None if it holds none of those."""
    if cache is None:
        return None
    if callable(getattr(cache, "nbytes", None)):
        return int(cache.nbytes())
    tensors = []
    for holder in [*(getattr(cache, "layers", None) or []), cache]:
        for field in _STATE_FIELDS:
            value = getattr(holder, field, None)
            tensors += list(value.values()) if isinstance(value, dict) else (
                list(value) if isinstance(value, (list, tuple)) else [value])
    tensors = [t for t in tensors if hasattr(t, "element_size")]
    return sum(t.numel() * t.element_size() for t in tensors) if tensors else None


class Runner:
    """prefill(ids) -> first greedy token (1, 1); decode(token) -> next greedy token."""

    max_positions: int | None = None  # positions the model was trained for (None: no limit)

    def __init__(self, model):
        self.model = model
        self.cache = None

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def details(self) -> dict:
        """What to record about how this model runs (beyond its name)."""
        return {}


class MossNetRunner(Runner):
    def __init__(self, model, compiled: bool = False, block: int = 0):
        super().__init__(model)
        self.block = block
        if not block:  # --mossnet-block 0 means one pass: turn off the model's own block prefill
            model.config.prefill_block_size = 0
        self.compiled_step = None  # mossnet-compiled: the raw decode step under torch.compile
        if compiled:
            import torch

            self.compiled_step = torch.compile(self._step, dynamic=False)

    def prefill(self, ids):
        # Whole prompt in one chunked-scan pass, or (--mossnet-block) in blocks through the cache,
        # which bounds the prefill's activation memory (the decode state is the same either way).
        block = self.block or ids.shape[1]
        out, cache = None, None
        for start in range(0, ids.shape[1], block):
            out = self.model(input_ids=ids[:, start:start + block], cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
        self.cache = cache
        return out.logits[:, -1:].argmax(-1)

    def _step(self, tok, conv_states, ssm_states):
        backbone = self.model.model
        h = backbone.embed_tokens(tok[:, 0]).float()
        for i, block in enumerate(backbone.layers):
            h = block(h[:, None], None, conv_states[i], ssm_states[i], decode=True)[0][:, 0]
        return self.model.lm_head(backbone.norm_f(h)).float()

    def decode(self, tok):
        if self.compiled_step is None:  # the public path: the inputs generate() passes each step
            inputs = self.model.prepare_inputs_for_generation(tok, cache=self.cache, logits_to_keep=1)
            logits = self.model(**inputs).logits[:, -1]
        else:
            logits = self.compiled_step(tok, self.cache.conv_states, self.cache.ssm_states)
            self.cache.seen_tokens += 1
        return logits.argmax(-1, keepdim=True)

    def decode_path(self) -> str:
        """How the decode steps ran: "cuda-graph" when a captured decoder exists, "compiled"
        (mossnet-compiled) or "eager"."""
        from mossnet.models.mossnet.cuda_graph_decode import graph_decoders

        if self.compiled_step is not None:
            return "compiled"
        return "cuda-graph" if graph_decoders(self.model) else "eager"

    def details(self) -> dict:
        return {"decode_path": self.decode_path(), "execution_policy": self.model.execution_policy.as_dict()}


class LlamaRunner(Runner):
    def __init__(self, model, static: bool, headroom: int):
        super().__init__(model)
        self.static, self.headroom = static, headroom
        self.position = None  # (1, 1) position of the next token, on the model's device
        self.kw = _cache_kw(model)
        # transformers before 5.2x take the cache slots as cache_position (generate passes them;
        # without them the model reads the cache's length back from the device every step).
        self.pass_cache_position = "cache_position" in inspect.signature(model.forward).parameters
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def _forward(self, ids, positions, **kw):
        extra = {"cache_position": positions[0]} if self.pass_cache_position else {}
        return self.model(input_ids=ids, use_cache=True, position_ids=positions, **{self.kw: self.cache}, **extra, **kw)

    def prefill(self, ids):
        import torch
        from transformers import DynamicCache, StaticCache

        cfg = self.model.config
        T = ids.shape[1]
        # A static cache holds this prompt and its decode steps (every step attends over all of it).
        if self.static:
            self.cache = StaticCache(config=cfg, max_cache_len=T + self.headroom)
        else:
            self.cache = DynamicCache(config=cfg)
        positions = torch.arange(T, device=ids.device)[None]
        out = self._forward(ids, positions, logits_to_keep=1)
        self.position = positions[:, -1:] + 1
        return out.logits[:, -1:].argmax(-1)

    def decode(self, tok):
        out = self._forward(tok, self.position)
        self.position = self.position + 1  # on the device: no host round trip per step
        return out.logits[:, -1:].argmax(-1)

    def details(self) -> dict:
        return {"cache": "static" if self.static else "dynamic", "max_position_embeddings": self.max_positions}


class Mamba2Runner(Runner):
    def __init__(self, model, block: int):
        super().__init__(model)
        self.block = block
        self.kw = _cache_kw(model)

    def prefill(self, ids):
        out, cache = None, None
        for start in range(0, ids.shape[1], self.block):
            out = self.model(input_ids=ids[:, start:start + self.block], use_cache=True, logits_to_keep=1,
                             **{self.kw: cache})
            cache = _out_cache(out)
        self.cache = cache
        return out.logits[:, -1:].argmax(-1)

    def decode(self, tok):
        out = self.model(input_ids=tok, use_cache=True, **{self.kw: self.cache})
        return out.logits[:, -1:].argmax(-1)


def _smollm2_teacher(args):
    if args.tiny:
        return tiny_llama()
    return smollm2_random() if args.smollm2_weights == "random" else load_smollm2(args.cache_dir)


def _build(name: str, args):
    """(model on the CPU in fp32, the runner class's keyword arguments) of benchmark model ``name``."""
    base = name.removesuffix(EAGER_SUFFIX)
    if base in ("mossnet", "mossnet-compiled"):
        return mossnet_model(args.tiny), MossNetRunner, {"compiled": base == "mossnet-compiled",
                                                        "block": args.mossnet_block}
    if base in CONVERTED_MODELS:
        arm = base.removeprefix("mossnet-smollm2-")
        return converted_mossnet(arm, args.tiny, args.smollm2_weights), MossNetRunner, {"block": args.mossnet_block}
    if name in ("smollm2", "smollm2-static"):
        headroom = max(args.decode_tokens, args.long_decode_tokens) + WARMUP_HEADROOM
        return _smollm2_teacher(args), LlamaRunner, {"static": name.endswith("static"), "headroom": headroom}
    if name == "mamba2":
        return mamba2_model(args.tiny), Mamba2Runner, {"block": args.mamba_block}
    raise ValueError(f"unknown model {name!r}; choose from {MODELS + OPTIONAL_MODELS}")


def build_runner(name: str, args, device=None, dtype=None) -> Runner:
    """The runner of model ``name`` on ``device`` (default: the CPU) in eval mode, its weights in
    ``dtype`` (default: the device's, fp32 on the CPU and bf16 on CUDA) except the parameters
    ``from_pretrained`` keeps in fp32 (what ``mossnet generate`` runs). A static KV cache is
    sized per prompt: its length plus the most decode steps ``args`` asks for (+ 2)."""
    import torch

    from mossnet import runtime

    device = torch.device("cpu") if device is None else torch.device(device)
    model, runner_class, kwargs = _build(name, args)
    model = cast_for_inference(model, dtype or runtime.resolve_dtype("auto", device)).to(device).eval()
    if name.endswith(EAGER_SUFFIX):
        model.execution_policy = model.execution_policy.replace(decode_graph=False)
    return runner_class(model, **kwargs)
