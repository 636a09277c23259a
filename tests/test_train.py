"""Training end to end on the offline smoke experiment: fast_dev_run, learning, resume, frozen backbone."""

import hashlib
from pathlib import Path

import hydra
import pytest
import torch
import yaml
from helpers import compose_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from src.train import train


def run_train(cfg):
    """Run the train task the way `@hydra.main` would."""
    HydraConfig().set_config(cfg)
    return train(cfg)


def test_fast_dev_run(cfg_train):
    """One batch of train/val/test runs and produces finite losses."""
    with open_dict(cfg_train):
        cfg_train.trainer.fast_dev_run = True
    metrics, objects = run_train(cfg_train)
    assert objects["trainer"].global_step == 1
    assert torch.isfinite(metrics["train/loss"])
    assert torch.isfinite(metrics["test/loss"])


@pytest.mark.slow
def test_smoke_learns_and_saves_loadable_checkpoints(cfg_train):
    """The blob is learnable: test accuracy well above chance; checkpoints load with weights_only=True."""
    metrics, objects = run_train(cfg_train)
    assert metrics["test/acc"] >= 0.85, metrics
    assert metrics["test/auroc"] >= 0.9, metrics
    ckpt_dir = Path(cfg_train.paths.output_dir, "checkpoints")
    assert (ckpt_dir / "last.ckpt").is_file()
    best = objects["trainer"].checkpoint_callback.best_model_path
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["run_config"]["model"]["backbone"] == "resnet10"
    assert checkpoint["hyper_parameters"]["weights"] is None
    # the split is written to the run directory and its hash logged with the run's hyper-parameters
    split_csv = Path(cfg_train.paths.output_dir, "split.csv")
    logged = yaml.safe_load(next(Path(cfg_train.paths.output_dir).glob("csv/**/hparams.yaml")).read_text())
    assert logged["data/split_sha256"] == hashlib.sha256(split_csv.read_bytes()).hexdigest()
    assert logged["params/trainable"] < logged["params/total"]


def test_frozen_backbone_unchanged_by_training(cfg_train):
    """Every backbone parameter and BatchNorm buffer is bitwise unchanged after an epoch; the head moved."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 1
        cfg_train.model.unfreeze = []

    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg_train.model)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    datamodule = hydra.utils.instantiate(cfg_train.data)
    trainer = hydra.utils.instantiate(
        cfg_train.trainer, logger=False, enable_checkpointing=False, callbacks=[]
    )
    HydraConfig().set_config(cfg_train)
    trainer.fit(model, datamodule)
    after = model.net.state_dict()
    backbone_keys = [k for k in before if k.startswith("features.")]
    assert any("running_mean" in k for k in backbone_keys)
    for key in backbone_keys:
        assert torch.equal(before[key], after[key]), f"{key} changed"
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])


def test_resume_from_last_checkpoint(cfg_train, tmp_path):
    """Resuming from last.ckpt continues the epoch and step counters instead of starting over."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 1
        cfg_train.test = False
        cfg_train.callbacks.early_stopping = None
    _, first = run_train(cfg_train)
    steps_per_epoch = first["trainer"].global_step
    last = Path(cfg_train.paths.output_dir, "checkpoints", "last.ckpt")

    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 2
        cfg_train.ckpt_path = str(last)
        cfg_train.paths.output_dir = str(tmp_path / "resumed")
    _, resumed = run_train(cfg_train)
    assert resumed["trainer"].current_epoch == 2
    assert resumed["trainer"].global_step == 2 * steps_per_epoch


@pytest.mark.parametrize("debug", ["fdr", "limit", "overfit", "profiler"])
def test_debug_configs_run(debug, tmp_path, data_dir):
    """Every debug mode runs the smoke experiment to the end (no logger, CPU, anomaly detection)."""
    cfg = compose_config(
        "train.yaml",
        ["experiment=smoke", f"debug={debug}", "trainer.max_epochs=2", "extras.print_config=false"],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.data_dir = str(data_dir)
    metrics, objects = run_train(cfg)
    assert objects["trainer"].logger is None
    assert torch.isfinite(metrics["test/loss"])
