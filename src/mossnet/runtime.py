"""Where a command runs: the one place that turns ``--device`` and ``--dtype`` into torch objects.

Device strings: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda`` and
``cuda:N``. A request this machine cannot honour (CUDA on a CPU-only PyTorch build, no visible
GPU, an index past the last GPU, a string that names no device) is a :class:`DeviceError` with
one line, never a silent fallback: a user who asked for a GPU and got a CPU would be misled
about every number the command prints.

Dtype names: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``fp32``/``float32``,
``bf16``/``bfloat16`` and ``fp16``/``float16``.

Parsing (``device_name``, ``dtype_name``) needs no torch, so argparse can refuse a typo before
anything heavy is imported; resolving needs torch and the machine.
"""

from __future__ import annotations

import argparse
import re

from mossnet.errors import DeviceError, OptionError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")

# every accepted spelling -> the canonical torch dtype name
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "float16": "float16"}
DTYPE_CHOICES = ("auto", *DTYPE_ALIASES)


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
    """The ``torch.dtype`` that ``name`` asks for; ``auto`` (or None) is bf16 on CUDA, fp32
    elsewhere. Raises OptionError for an unknown name (argparse's ``dtype_name`` catches those
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
