"""Hydra multirun and DDP, run as a user would: `python src/train.py -m ...` in a subprocess (the W&B
multirun: test_wandb_tracking; Optuna: test_launchers)."""

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import assert_ok, run_entry_point

from pneumonia_cam.callbacks.seed_summary import best_checkpoint

pytestmark = pytest.mark.slow

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"]


def test_ddp_two_cpu_processes(tmp_path, data_dir):
    """DDP with 2 gloo processes trains an epoch; each rank sees half the training set."""
    result = run_entry_point(
        "train.py",
        [
            "experiment=smoke",
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={tmp_path}",
            *QUIET,
        ],
    )
    assert_ok(result)
    split = pd.read_csv(tmp_path / "split.csv")
    n_train = int((split["split"] == "train").sum())
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    batch_size = checkpoint["run_config"]["data"]["batch_size"]
    assert checkpoint["global_step"] == math.ceil(math.ceil(n_train / 2) / batch_size)
    assert "test/acc" in result.stdout or "test/acc" in result.stderr
    assert Path(tmp_path, "checkpoints", "last.ckpt").is_file()


def test_seed_sweep_evaluates_each_job_and_summarises(tmp_path, data_dir):
    """`-m seed=a,b hydra/callbacks=seed_summary`: eval.py per job, then seeds.md with their mean ± std."""
    sweep_dir = tmp_path / "seeds"
    result = run_entry_point(
        "train.py",
        [
            "-m",
            "experiment=smoke",
            "seed=3,4",
            "trainer.max_epochs=1",
            "hydra/callbacks=seed_summary",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.sweep.subdir=seed_${seed}",
            *QUIET,
        ],
    )
    assert_ok(result)
    accuracies, walls = {}, {}
    for seed in (3, 4):
        job = sweep_dir / f"seed_{seed}"
        evaluated = json.loads((job / "eval" / "metrics.json").read_text())
        assert evaluated["ckpt_path"] == str(next((job / "checkpoints").glob("epoch_*.ckpt")))
        assert evaluated["operating_point"]["method"] == "youden"  # the callback's eval_overrides
        accuracies[seed] = evaluated["metrics"]["accuracy"]["value"]
        walls[seed] = json.loads((job / "wall_time.json").read_text())
        assert walls[seed]["seed"] == seed and walls[seed]["train_wall_s"] > 0
    summary = (sweep_dir / "seeds.md").read_text()
    mean, std = statistics.mean(accuracies.values()), statistics.stdev(accuracies.values())
    assert f"| accuracy | {mean:.3f} ± {std:.3f} |" in summary
    for seed in (3, 4):
        assert f"| {seed} | " in summary
        assert f"| {walls[seed]['train_wall_s'] / 60:.1f} |" in summary


def test_seed_summary_needs_one_best_checkpoint(tmp_path):
    """A run folder with several epoch checkpoints (save_top_k > 1) is refused with the fix named."""
    (tmp_path / "checkpoints").mkdir()
    for epoch in (1, 2):
        (tmp_path / "checkpoints" / f"epoch_00{epoch}.ckpt").touch()
    with pytest.raises(FileNotFoundError, match=r"found 2.*save_top_k=1"):
        best_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "epoch_002.ckpt").unlink()
    assert best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "epoch_001.ckpt"
