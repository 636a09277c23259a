"""Offline, the default command stops within seconds and says what to pass instead."""

import time

import pytest
from helpers import run_entry_point

pytestmark = pytest.mark.slow


def test_default_train_fails_fast_offline_with_actionable_message(tmp_path):
    """`python src/train.py` needs ImageNet weights and PneumoniaMNIST; offline both name the alternatives."""
    start = time.monotonic()
    result = run_entry_point(
        "train.py", [f"hydra.run.dir={tmp_path / 'a'}", f"paths.data_dir={tmp_path}"], timeout=120
    )
    assert result.returncode != 0
    assert time.monotonic() - start < 90
    assert "model.weights=" in result.stderr

    result = run_entry_point(
        "train.py",
        ["model.weights=null", f"hydra.run.dir={tmp_path / 'b'}", f"paths.data_dir={tmp_path}"],
        timeout=120,
    )
    assert result.returncode != 0
    assert "experiment=smoke" in result.stderr
