"""``mossnet info``: versions, the device, and the execution policy (which path each op takes)."""

from __future__ import annotations

import argparse
import importlib.metadata
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
    """(label, value) rows of the report for ``device`` (a torch.device): versions, the device,
    and what the default execution policy (config defaults + MOSSNET_TRITON_* environment)
    resolves to there."""
    import torch

    from mossnet.execution import ExecutionPolicy
    from mossnet.runtime import machine_info

    machine = machine_info(device)
    rows = [("python", machine["python"]), ("platform", machine["platform"])]
    for package in ("mossnet", "torch", "transformers", "safetensors", "tokenizers", "triton", "lm-eval", "onnxruntime"):
        rows.append((package, _version(package)))
    rows.append(("device", str(device)))
    if device.type == "cuda":
        rows.append(("gpu", machine["gpu"]))
    else:
        rows.append(("cpu threads", str(torch.get_num_threads())))
    return rows + ExecutionPolicy.build().describe(device)


def run(args: argparse.Namespace) -> int:
    from mossnet import runtime

    rows = describe(runtime.resolve_device(args.device))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
