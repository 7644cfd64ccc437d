"""The Triton scan's execution choices: read from the environment in one function, and
importable where Triton is not installed (so a CPU install can build and print them)."""

from __future__ import annotations

import subprocess
import sys

from mossnet.ops.mosse.triton.options import TritonScanOptions, options_from_env


def test_defaults_without_environment():
    assert options_from_env({}) == TritonScanOptions(specialize=False, autotune=True, lowp=True)


def test_each_variable_turns_its_choice():
    assert options_from_env({"MOSSNET_TRITON_SPECIALIZE": "1"}).specialize
    assert not options_from_env({"MOSSNET_TRITON_AUTOTUNE": "0"}).autotune
    assert not options_from_env({"MOSSNET_TRITON_LOWP": "0"}).lowp
    # Only the documented spellings switch: anything else keeps the default.
    assert options_from_env({"MOSSNET_TRITON_SPECIALIZE": "yes", "MOSSNET_TRITON_AUTOTUNE": "1"}) == TritonScanOptions()


def test_reads_the_process_environment_at_each_call(monkeypatch):
    monkeypatch.setenv("MOSSNET_TRITON_AUTOTUNE", "0")
    assert not options_from_env().autotune
    monkeypatch.delenv("MOSSNET_TRITON_AUTOTUNE")
    assert options_from_env().autotune


def test_options_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # any `import triton` now raises ImportError
        "from mossnet.ops.mosse.triton.options import options_from_env\n"
        "from mossnet.ops import mosse_scan, resolve_impl\n"
        "import torch\n"
        "print(options_from_env({}).autotune, resolve_impl('auto', torch.zeros(1)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "chunked"]
