"""``benchmarks/profile_train_step.py``: the host profile it prints with ``--host`` (the rest of
the script needs a GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_train_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("profile_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slow_python(n=20_000):
    return sum(i * i for i in range(n))


def test_host_profile_names_the_function_that_takes_the_time():
    text = load_script().host_profile(lambda: slow_python(), steps=3, top=5)
    assert "function calls" in text and "slow_python" in text.split("ncalls", 1)[1]
