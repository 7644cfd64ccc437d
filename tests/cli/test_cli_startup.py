"""`mossnet --help` and `mossnet --version` answer without importing torch or transformers (so
they take a fraction of a second), and the version is written in one place."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mossnet

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# Runs the CLI in a fresh interpreter, then reports which heavy modules the run imported.
PROBE = """
import sys
import mossnet_cli  # what the `mossnet` console script imports first
from mossnet.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "numpy", "tokenizers") if m in sys.modules)
print("heavy:", ",".join(heavy))
"""


def _probe(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["--version"]])
def test_help_and_version_import_no_heavy_module(argv):
    out = _probe(*argv)
    assert out.rstrip().endswith("heavy:"), out[-300:]


def test_import_mossnet_registers_the_auto_classes():
    """Outside the console script, a bare `import mossnet` registers MossNet (docs/SPEC.md, section 6)."""
    code = ("import mossnet\nfrom transformers import AutoConfig\n"
            "print(type(AutoConfig.for_model('mossnet')).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "MossNetConfig", done.stderr


def test_version_is_printed():
    out = _probe("--version")
    assert out.splitlines()[0] == f"mossnet {mossnet.__version__}"


def test_version_is_written_once():
    text = PYPROJECT.read_text()
    assert re.search(r'^dynamic = \["version"\]', text, re.M)
    assert not re.search(r"^version = [\"']", text, re.M)  # no literal version string
    assert 'version = { attr = "mossnet.__version__" }' in text
    assert re.fullmatch(r"\d+\.\d+\.\d+", mossnet.__version__)


def test_installed_metadata_reports_the_same_version():
    """The installed distribution's version comes from mossnet.__version__ (skipped where the
    installed copy is another checkout's, as in a helper worktree)."""
    try:
        installed = importlib.metadata.distribution("mossnet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mossnet is not installed here (run from a checkout on PYTHONPATH)")
    origin = Path(mossnet.__file__).resolve().parents[1]
    direct_url = installed.read_text("direct_url.json") or ""
    if origin.parent.as_uri() not in direct_url:
        pytest.skip(f"the installed mossnet is not this checkout ({direct_url.strip()})")
    assert installed.version == mossnet.__version__


def test_importing_mossnet_under_the_console_script_stays_light():
    code = ("import sys, mossnet_cli, mossnet; "
            "print(mossnet.__version__, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [mossnet.__version__, "False", "False"]


def test_model_classes_load_on_first_use_and_register_the_auto_classes():
    code = ("import mossnet; from transformers import AutoConfig; cls = mossnet.MossNetForCausalLM; "
            "print(cls.__name__, type(AutoConfig.for_model('mossnet')).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["MossNetForCausalLM", "MossNetConfig"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        mossnet.NoSuchThing  # noqa: B018
