"""One interface over the compared model families: ``prefill(ids)`` fills the cache and returns
the first greedy token (1, 1); ``decode(token)`` takes one step through the cache and returns the
next. ``build_runner`` maps a benchmark model name to its model and runner."""

from __future__ import annotations

from mossnet.bench.models import load_smollm2, mamba2_model, mossnet_model, smollm2_random, tiny_llama

MODELS = ("mossnet", "smollm2", "smollm2-static", "mamba2")
OPTIONAL_MODELS = ("mossnet-compiled",)
RECURRENT_MODELS = ("mossnet", "mossnet-compiled", "mamba2")  # also run at --extra-contexts


def _cache_kw(model) -> str:
    """transformers renamed ``past_key_values`` / ``cache_params`` to ``cache`` (5.2x)."""
    import inspect

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


class Runner:
    """prefill(ids) -> first greedy token (1, 1); decode(token) -> next greedy token."""

    def __init__(self, model):
        self.model = model

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size


class MossNetRunner(Runner):
    def __init__(self, model, compiled: bool = False, block: int = 0):
        super().__init__(model)
        self.cache, self.block = None, block
        if not block:  # --mossnet-block 0 means one pass: turn off the model's own block prefill
            model.config.prefill_block_size = 0
        self.step_fn = self._step
        if compiled:
            import torch

            self.step_fn = torch.compile(self._step, dynamic=False)

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
        if self.step_fn is self._step:  # the public path: forward with the cache
            logits = self.model(input_ids=tok, cache=self.cache, use_cache=True).logits[:, -1]
        else:
            logits = self.step_fn(tok, self.cache.conv_states, self.cache.ssm_states)
            self.cache.seen_tokens += 1
        return logits.argmax(-1, keepdim=True)


class LlamaRunner(Runner):
    def __init__(self, model, static: bool, max_len: int):
        super().__init__(model)
        self.static, self.max_len = static, max_len
        self.cache, self.pos = None, 0
        self.kw = _cache_kw(model)

    def prefill(self, ids):
        import torch
        from transformers import DynamicCache, StaticCache

        cfg = self.model.config
        self.cache = StaticCache(config=cfg, max_cache_len=self.max_len) if self.static else DynamicCache(config=cfg)
        T = ids.shape[1]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, position_ids=torch.arange(T)[None],
                         **{self.kw: self.cache})
        self.pos = T
        return out.logits[:, -1:].argmax(-1)

    def decode(self, tok):
        import torch

        out = self.model(input_ids=tok, use_cache=True, position_ids=torch.tensor([[self.pos]]), **{self.kw: self.cache})
        self.pos += 1
        return out.logits[:, -1:].argmax(-1)


class Mamba2Runner(Runner):
    def __init__(self, model, block: int):
        super().__init__(model)
        self.block, self.cache = block, None
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


def build_runner(name: str, args, ctx: int, n_decode: int) -> Runner:
    """The runner of model ``name`` (a static KV cache is sized for ``ctx + n_decode`` tokens)."""
    if name == "mossnet":
        return MossNetRunner(mossnet_model(args.tiny).eval(), block=args.mossnet_block)
    if name == "mossnet-compiled":
        return MossNetRunner(mossnet_model(args.tiny).eval(), compiled=True, block=args.mossnet_block)
    if name in ("smollm2", "smollm2-static"):
        if args.tiny:
            model = tiny_llama()
        else:
            model = smollm2_random() if args.smollm2_weights == "random" else load_smollm2(args.cache_dir)
        return LlamaRunner(model.eval(), static=name.endswith("static"), max_len=ctx + n_decode + 2)
    if name == "mamba2":
        return Mamba2Runner(mamba2_model(args.tiny).eval(), block=args.mamba_block)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS + OPTIONAL_MODELS}")
