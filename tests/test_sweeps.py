"""Hydra multirun and DDP, run as a user would: `python src/train.py -m ...` in a subprocess."""

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import assert_ok, run_entry_point

from pneumonia_cam.callbacks.seed_summary import best_checkpoint

pytestmark = pytest.mark.slow

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"]


def test_multirun_jobs_get_own_dirs_and_wandb_runs(tmp_path, data_dir):
    """Two jobs: two run directories, each with its own checkpoint, config and W&B run (never merged)."""
    sweep_dir = tmp_path / "sweep"
    result = run_entry_point(
        "train.py",
        [
            "-m",
            "experiment=smoke",
            "model.optimizer.lr=0.001,0.0001",
            "trainer.max_epochs=1",
            "logger=wandb",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep_dir}",
            *QUIET,
        ],
    )
    assert_ok(result)
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs, run_ids = [], []
    for job in jobs:
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        lrs.append(checkpoint["hyper_parameters"]["optimizer"]["lr"])
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: expected one offline W&B run, found {runs}"
        run_ids.append(runs[0].name.rsplit("-", 1)[-1])
    assert lrs == [0.001, 0.0001]
    assert run_ids[0] != run_ids[1]


def test_optuna_sweep_reports_best_value(tmp_path, data_dir):
    """The Optuna search runs trials and writes the best value of the monitored metric."""
    sweep_dir = tmp_path / "optuna"
    result = run_entry_point(
        "train.py",
        [
            "hparams_search=optuna",
            "experiment=smoke",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "trainer.max_epochs=1",
            "test=false",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep_dir}",
            *QUIET,
        ],
    )
    assert_ok(result)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    best = results["best_value"]
    trial_bests = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        metrics = pd.read_csv(next(job.glob("csv/**/metrics.csv")))
        trial_bests.append(metrics["val/loss_best"].dropna().iloc[-1])
    assert len(trial_bests) == 2
    assert best == pytest.approx(min(trial_bests), rel=1e-5)


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
