"""``mossnet info``: versions, the device, and which execution path each op will take."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
from typing import TYPE_CHECKING

from mossnet.runtime import device_name

if TYPE_CHECKING:  # torch is imported when the command runs, so that `mossnet --help` stays fast
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_name, default="auto",
                        help="device to report on: auto | cpu | cuda | cuda:N (default auto: cuda if available)")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe(device) -> list[tuple[str, str]]:
    """(label, value) rows of the report for ``device`` (a torch.device)."""
    import warnings

    import torch

    from mossnet.ops.mosse.interface import resolve_impl

    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for package in ("mossnet", "torch", "transformers", "safetensors", "tokenizers", "triton", "lm-eval", "onnxruntime"):
        rows.append((package, _version(package)))
    rows.append(("device", str(device)))
    if device.type == "cuda":
        rows.append(("gpu", torch.cuda.get_device_name(device)))
    else:
        rows.append(("cpu threads", str(torch.get_num_threads())))
    probe = torch.empty(0, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = resolve_impl("auto", probe)
    note = f" ({caught[0].message})" if caught else ""
    rows.append(("mosse_scan (training / prefill)", scan + note))
    rows.append(("mosse_step (decode)", "fused routed step (MoSSE.step): only the chosen experts' weights and states"))
    grouped = device.type == "cuda" and hasattr(torch, "_grouped_mm")
    rows.append(("expert matmuls", "torch._grouped_mm (bf16)" if grouped else "one matmul per expert group"))
    return rows


def run(args: argparse.Namespace) -> int:
    from mossnet import runtime

    rows = describe(runtime.resolve_device(args.device))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
