"""reproducible.enabled=true: fp32, deterministic algorithms and pinned threads, identical run after run."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_ok, entry_point_command, run_commands

from pneumonia_cam.utils.run_config import load_run_config


def train_overrides(run_dir: Path, data_dir: Path) -> list[str]:
    """Two epochs of the smoke experiment asking for bf16, in reproducible mode, in `run_dir`."""
    return [
        "experiment=smoke",
        "reproducible.enabled=true",
        "reproducible.threads=1",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=2",
        "test=false",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        "extras.print_config=false",
        "extras.enforce_tags=false",
        "callbacks.rich_progress_bar=null",
    ]


@pytest.mark.slow
def test_reproducible_mode_forces_fp32_and_repeats_bitwise(tmp_path, data_dir):
    """Two runs of one command, at once (one thread each): fp32 despite bf16 asked, bitwise equal weights."""
    runs = [tmp_path / name for name in ("a", "b")]
    for result in run_commands(
        [entry_point_command("train.py", train_overrides(run, data_dir)) for run in runs]
    ):
        assert_ok(result)
        assert (
            "Reproducible mode: fp32, deterministic algorithms, 1 intra-op threads"
            in result.stdout + result.stderr
        )
    first, second = (run / "checkpoints" / "last.ckpt" for run in runs)
    assert load_run_config(first).trainer.precision == "32-true"  # bf16 was asked for and overridden
    weights = [
        torch.load(path, map_location="cpu", weights_only=True)["state_dict"] for path in (first, second)
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    trained = [k for k in weights[0] if k.endswith("weight") and "layer4" in k]
    assert trained  # the weights compared include ones that trained


@pytest.mark.slow
def test_apply_reproducible_sets_torch_state():
    """In a fresh process: deterministic algorithms on, threads pinned, config forced to fp32."""
    code = (
        "from omegaconf import OmegaConf\n"
        "import torch\n"
        "from pneumonia_cam.utils.reproducible import apply_reproducible\n"
        "cfg = OmegaConf.create({'reproducible': {'enabled': True, 'threads': 1},"
        " 'trainer': {'precision': 'bf16-mixed', 'deterministic': False},"
        " 'data': {'feature_cache': {'precision': 'bf16'}}})\n"
        "assert apply_reproducible(cfg)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.get_num_threads() == 1 and torch.get_num_interop_threads() == 1\n"
        "assert cfg.trainer.precision == '32-true' and cfg.trainer.deterministic is True\n"
        "assert cfg.data.feature_cache.precision == 'fp32'\n"
        "off = OmegaConf.create({'reproducible': {'enabled': False, 'threads': 1}, 'trainer': {}})\n"
        "assert not apply_reproducible(off)\n"
    )
    (result,) = run_commands([[sys.executable, "-c", code]], timeout=120)
    assert result.returncode == 0, result.stderr
