"""Imports flow one way: utils <- data <- models <- evaluation <- runtime <- inference <- ... <- src."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_commands

pytestmark = pytest.mark.slow  # each test runs lint-imports or Python in a subprocess

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the project's contract (pyproject.toml) on the tree at `root`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120
    )


def test_project_keeps_its_layers():
    """The contract `make lint` checks holds for the code as it is."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: data/ importing the inference layer, and the server importing Lightning, are
    reported, naming the modules."""
    for name in ("pneumonia_cam", "src"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    dataset = tmp_path / "pneumonia_cam" / "data" / "dataset.py"
    dataset.write_text(dataset.read_text() + "\nimport pneumonia_cam.inference.model  # noqa\n")
    schemas = tmp_path / "pneumonia_cam" / "serving" / "schemas.py"
    schemas.write_text(schemas.read_text() + "\nimport lightning  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "pneumonia_cam.data is not allowed to import pneumonia_cam.inference" in result.stdout
    assert "pneumonia_cam.serving.schemas -> lightning" in result.stdout


def test_serving_entry_points_start_without_lightning():
    """What serves (server, DICOM node, predict) imports no Lightning, not even through a third-party
    package: seconds off every start."""
    code = (
        "import sys\n"
        "import src.dicom_node, src.predict, src.serve\n"
        "loaded = sorted(m for m in sys.modules if m == 'lightning' or m.startswith('lightning.'))\n"
        "assert not loaded, loaded[:5]\n"
        "assert 'pneumonia_cam.inference.model' in sys.modules and 'torch' in sys.modules\n"
    )
    (result,) = run_commands([[sys.executable, "-c", code]], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
