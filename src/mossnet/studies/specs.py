"""Study run specs: one frozen dataclass per kind of run.

A spec holds everything that changes a run's answer (its *settings*) and, in fields marked with
:func:`execution`, where and how fast it runs (device, threads, output paths, a label). The
runner compares a spec's settings with a stored result to refuse reusing numbers made with
other settings, and hands a spec to an isolated child process as JSON
(:meth:`RunSpec.to_json` / :meth:`RunSpec.from_json`, exact round trip).

>>> spec = MQARRunSpec(name="mqar/x", result="/tmp/x.json", arch="llama", d_model=16, lr=1e-3, seed=0)
>>> RunSpec.from_json(spec.to_json()) == spec
True
>>> "device" in spec.settings(), "d_model" in spec.settings()
(False, True)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar


def execution(default: Any = dataclasses.MISSING, **kwargs):
    """A field that says where or how fast a run executes, not what it answers."""
    return field(default=default, metadata={"execution": True}, **kwargs)


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists), for comparisons across a round trip."""
    return json.loads(json.dumps(value))


def _tuples(value: Any) -> Any:
    """Lists (at any depth) back to tuples: the inverse of JSON on a tuple-typed field."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What every run has: a name, the path of its result JSON, a seed, a learning rate, and
    where it executes. ``kind`` (a class constant) says which executor runs it."""

    KIND: ClassVar[str] = ""
    name: str = execution()
    result: str = execution()
    seed: int
    lr: float
    label: str = execution("")
    device: str = execution("auto")
    dtype: str = execution("auto")
    threads: int = execution(0)
    cuda_graph: bool = execution(False)

    @property
    def kind(self) -> str:
        return self.KIND

    def settings(self) -> dict[str, Any]:
        """The fields that change the answer, plus ``kind`` (JSON-plain values)."""
        out = {"kind": self.KIND}
        for f in dataclasses.fields(self):
            if not f.metadata.get("execution"):
                out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.KIND, **_plain(dataclasses.asdict(self))}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "RunSpec":
        """The spec ``to_json`` wrote (its ``kind`` picks the class); unknown keys are refused."""
        kinds = {cls.KIND: cls for cls in (LMRunSpec, MQARRunSpec)}
        data = dict(data)
        kind = data.pop("kind", None)
        if kind not in kinds:
            raise ValueError(f"unknown run kind {kind!r}; known: {sorted(kinds)}")
        cls = kinds[kind]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"a {kind} run spec has no field(s) {', '.join(unknown)}")
        for key, value in data.items():
            if str(fields[key].type).startswith("tuple"):
                data[key] = _tuples(value)
        return cls(**data)

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class LMRunSpec(RunSpec):
    """One ``mossnet.train`` run of a language-model study (``lm_study.execute_lm``).

    ``model``: overrides of the reference MossNet config (for a baseline, the keys shape its
    reference). ``probes``: also measure the decomposition study's metrics on ``probe_tokens``
    validation tokens (``lm_probes``)."""

    KIND: ClassVar[str] = "lm"
    study: str
    variant: str
    family: str
    trainer_arch: str
    model: dict = field(default_factory=dict)
    preset: str = "tiny"
    seq_len: int
    batch_size: int
    max_steps: int
    warmup_steps: int
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    eval_interval: int
    eval_tokens: int
    probes: bool = False
    probe_tokens: int = 0
    train_dir: str = execution()
    data: str = execution()
    ckpt_interval: int = execution(1)

    @property
    def tokens(self) -> int:
        return self.max_steps * self.batch_size * self.seq_len


@dataclass(frozen=True, kw_only=True)
class MQARRunSpec(RunSpec):
    """One MQAR training run (``mqar.execute_mqar``).

    The task: ``num_pairs`` pairs in ``seq_len`` tokens, or (``mixture`` named; both 0 then) a
    mixture of (length, pairs) slices padded to the longest. ``generator``: "zoology" (Zoology's sampling)
    or "uniform" (the earlier grids': values with replacement, uniform query positions, blank
    filler). ``model``: options of the architecture (``mqar.build_model``). Training stops
    early once the held-out accuracy of slice ``stop_slice`` reaches ``stop_accuracy`` at a curve
    point (Zoology's early stopping; empty = never)."""

    KIND: ClassVar[str] = "mqar"
    study: str = "mqar"
    arch: str
    variant: str = ""  # the row a study's report puts the run in (the gate's rung, the ranking's model)
    d_model: int
    n_layers: int = 2
    model: dict = field(default_factory=dict)
    seq_len: int = 64
    num_pairs: int = 4
    mixture: str = ""
    generator: str = "zoology"
    vocab_size: int = 8192
    steps: int = 1500
    batch_size: int = 16
    eval_examples: int = 512
    warmup_steps: int = 20
    weight_decay: float = 0.1
    eval_points: int = 0
    stop_slice: str = ""
    stop_accuracy: float = 0.0
