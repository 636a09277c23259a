"""The README's Python API snippet runs as written (against a smoke checkpoint and the real images)."""

import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT, SHARED_DATA


@pytest.mark.slow
@pytest.mark.real_data
def test_readme_python_snippet_runs(smoke_checkpoint, tmp_path):
    """Lay out `logs/` and `../shared` as the snippet expects, then run it in a fresh interpreter."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    work = tmp_path / "work"
    checkpoints = work / "logs" / "train" / "runs" / "2026-01-01_00-00-00_000000" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").symlink_to(smoke_checkpoint)
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    label, confidence, *_ = result.stdout.split()
    assert label in {"NORMAL", "PNEUMONIA"}
    assert 0.5 <= float(confidence) <= 1.0
    # the Quick Start chain: the CAM of the preprocessed tensor at its size, the file's at the original's
    assert result.stdout.split(maxsplit=2)[2].strip() == "(64, 64) (224, 224) (3, 64, 64)"
