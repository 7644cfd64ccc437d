"""Run the docstring examples of every module in mossnet.ops, mossnet.layers and mossnet.models,
and of mossnet.execution: the examples in the API docs must stay true."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest
import torch

import mossnet

PACKAGES = ["mossnet.ops", "mossnet.layers", "mossnet.models"]
MODULES = ["mossnet.execution"]


def module_names() -> list[str]:
    names = list(MODULES)
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
            names.append(info.name)
    return sorted(names)


def modules_with_examples() -> list[str]:
    """Modules that have docstring examples, plus any that cannot be imported here (their
    test reports why it skips)."""
    names = []
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except ImportError:
            names.append(name)
            continue
        if any(t.examples for t in doctest.DocTestFinder().find(module, name)):
            names.append(name)
    return names


@pytest.mark.parametrize("name", modules_with_examples())
def test_doctests(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # e.g. a GPU-only module whose optional dependency is absent
        pytest.skip(f"cannot import {name}: {err}")
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name, globs={"torch": torch, "mossnet": mossnet})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    examples = 0
    for test in tests:
        if not test.examples:
            continue
        # Module globals first (what the docstring's module imports), then torch / mossnet.
        test.globs = {**vars(module), "torch": torch, "mossnet": mossnet}
        examples += len(test.examples)
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert examples > 0
    assert result.failed == 0, out.getvalue()


def test_the_core_modules_have_examples():
    """The modules whose docstrings promise examples actually have some."""
    with_examples = modules_with_examples()
    for name in [
        "mossnet.ops.mosse.interface", "mossnet.ops.mosse.naive", "mossnet.ops.mosse.chunked",
        "mossnet.ops.conv.segment_conv", "mossnet.ops.moe.dispatch", "mossnet.ops.moe.grouped_linear",
        "mossnet.execution",
        "mossnet.models.mossnet.configuration_mossnet", "mossnet.models.mossnet.cache",
    ]:
        assert name in with_examples, name
