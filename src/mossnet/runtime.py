"""Where and how a command runs: the one place that turns ``--device`` and ``--dtype`` into torch
objects, decides which autocast a run uses, and describes the machine for reports.

Device strings: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda`` and
``cuda:N``. A request this machine cannot honour (CUDA on a CPU-only PyTorch build, no visible
GPU, an index past the last GPU, a string that names no device) is a :class:`DeviceError` with
one line, never a silent fallback: a user who asked for a GPU and got a CPU would be misled
about every number the command prints.

Two dtype vocabularies, for two questions:

* the *weights* dtype (``generate``, ``eval``): ``auto`` (bf16 on CUDA, fp32 on the CPU and
  wherever no device is named), ``fp32``/``float32``, ``bf16``/``bfloat16`` and
  ``fp16``/``float16`` (:data:`DTYPE_CHOICES`, :func:`resolve_dtype`);
* the *compute* dtype of training and studies, where the weights stay fp32 and the forward runs
  under autocast: ``auto`` (bf16 autocast on a CUDA card that supports it, else none), ``bf16``
  (always) or ``fp32`` (never) (:data:`AUTOCAST_DTYPES`, :func:`autocast_factory`).

Parsing (``device_name``, ``dtype_name``) needs no torch, so argparse can refuse a typo before
anything heavy is imported; resolving needs torch and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from mossnet.errors import DeviceError, OptionError

if TYPE_CHECKING:  # torch is imported where it is needed, so that argument parsing stays fast
    import torch

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")

# every accepted spelling -> the canonical torch dtype name
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "float16": "float16"}
DTYPE_CHOICES = ("auto", *DTYPE_ALIASES)

# the compute dtypes of a run that autocasts (train, distill, compare): see autocast_factory
AUTOCAST_DTYPES = ("auto", "fp32", "bf16")


def device_name(text: str) -> str:
    """argparse type: a device string of an accepted form (availability is checked later, by
    :func:`resolve_device`). Returns it lower-cased and stripped."""
    name = text.strip().lower()
    match = _DEVICE_RE.match(name)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_FORMS}, got {text!r}")
    return name


def dtype_name(text: str) -> str:
    """argparse type: ``auto`` or a dtype spelling; returns ``auto`` or the canonical name
    (``float32``, ``bfloat16``, ``float16``)."""
    name = text.strip().lower().removeprefix("torch.")
    if name == "auto":
        return name
    if name not in DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPE_CHOICES)}, got {text!r}")
    return DTYPE_ALIASES[name]


def resolve_device(name: str | None = "auto", *, option: str = "--device"):
    """The ``torch.device`` that ``name`` asks for, after checking that this machine has it.

    Raises DeviceError (one line naming ``option``) for a bad string or an unavailable device.
    """
    import torch

    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(name, torch.device):
        name = str(name)
    try:
        text = device_name(name)
    except argparse.ArgumentTypeError:
        raise DeviceError(f"{option} {name}: not a device; expected {DEVICE_FORMS}") from None
    device = torch.device(text)
    if device.type == "cuda":
        _check_cuda(device, option)
    return device


def _check_cuda(device, option: str) -> None:
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise DeviceError(f"{option} {device}: this PyTorch ({torch.__version__}) was built without CUDA; "
                          "use --device cpu, or install a CUDA build of PyTorch")
    if not torch.cuda.is_available():
        raise DeviceError(f"{option} {device}: no CUDA GPU is visible (check the driver and "
                          "CUDA_VISIBLE_DEVICES); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"{option} {device}: this machine has {count} visible CUDA "
                          f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")


def resolve_dtype(name: str | None, device=None):
    """The weights ``torch.dtype`` that ``name`` asks for; ``auto`` (or None) is bf16 on a CUDA
    ``device``, fp32 on any other and when ``device`` is None. Raises OptionError for an unknown name (argparse's ``dtype_name`` catches those
    earlier on the command line)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    try:
        canonical = dtype_name(name or "auto")
    except argparse.ArgumentTypeError:
        raise OptionError(f"--dtype {name}: expected one of {', '.join(DTYPE_CHOICES)}") from None
    if canonical == "auto":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda else torch.float32
    return getattr(torch, canonical)


def uses_bf16(device: torch.device, dtype: str = "auto") -> bool:
    """Whether a run with compute dtype ``dtype`` (one of AUTOCAST_DTYPES) autocasts to bf16 on
    ``device``: always for "bf16", never for "fp32", and for "auto" on a CUDA card with bf16."""
    import torch

    return dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def autocast_factory(device: torch.device, dtype: str = "auto",
                     capture: bool = False) -> Callable[[], ContextManager]:
    """A zero-argument factory of the run's autocast context (bf16 per :func:`uses_bf16`, else
    a no-op). ``capture``: the form a step captured in a CUDA graph needs
    (:func:`autocast_for_capture`).

    Example::

        autocast = autocast_factory(torch.device("cuda"), "auto")
        with autocast():
            logits = model(input_ids).logits
    """
    import torch

    if not uses_bf16(device, dtype):
        return contextlib.nullcontext
    if capture:
        return lambda: autocast_for_capture(device.type, torch.bfloat16)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def autocast_for_capture(device_type: str, dtype: torch.dtype | None) -> ContextManager:
    """An autocast context for a step captured in a CUDA graph (None: no autocast). The cast
    cache is off, as PyTorch's CUDA-graph notes ask for autocast inside a graph; each weight is
    cast once per use instead."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """What a report says about the machine: host, OS, Python, CPU model, cores, memory, the
    torch and transformers versions, and the GPU's name (``device``'s when it is a CUDA device,
    else the first visible GPU's; None without one)."""
    import torch

    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                            "memory_gb": _memory_gb(), "torch": torch.__version__, "gpu": None}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if torch.cuda.is_available():
        cuda = device if device is not None and torch.device(device).type == "cuda" else 0
        info["gpu"] = torch.cuda.get_device_name(cuda)
    return info


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None
