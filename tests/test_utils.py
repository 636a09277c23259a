"""Config resolvers and task plumbing."""

import pytest
import torch

from pneumonia_cam.utils import get_metric_value
from pneumonia_cam.utils.resolvers import optuna_direction, wandb_offline


@pytest.mark.parametrize(
    ("env", "offline"),
    [
        ({}, True),
        ({"WANDB_API_KEY": "abc"}, False),
        ({"WANDB_API_KEY": "abc", "WANDB_MODE": "offline"}, True),
        ({"WANDB_API_KEY": "abc", "WANDB_MODE": "online"}, False),
    ],
)
def test_wandb_offline_without_api_key(monkeypatch, env, offline):
    """W&B goes offline exactly when there is no key or offline mode was asked for."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wandb_offline() is offline


def test_optuna_direction():
    """Monitor modes map onto Optuna directions; anything else is a config error."""
    assert optuna_direction("min") == "minimize"
    assert optuna_direction("max") == "maximize"
    with pytest.raises(ValueError, match=r"monitor\.mode"):
        optuna_direction("down")


def test_get_metric_value():
    """The sweeper gets a float, and a misspelt metric fails loudly."""
    assert get_metric_value({"val/loss_best": torch.tensor(0.25)}, "val/loss_best") == 0.25
    assert get_metric_value({}, None) is None
    with pytest.raises(ValueError, match="val/acc_best"):
        get_metric_value({"val/loss_best": torch.tensor(0.25)}, "val/acc_best")


def test_csv_logger_keeps_columns_written_by_another_process(tmp_path):
    """A second writer (ddp_spawn's test stage) adds columns without losing or breaking the first's rows."""
    from pneumonia_cam.utils.csv_logger import CSVLogger

    fit = CSVLogger(save_dir=tmp_path, name="csv", version=0)
    fit.log_metrics({"train/loss": 0.5, "val/loss": 0.4}, step=0)
    fit.save()
    test = CSVLogger(save_dir=tmp_path, name="csv", version=0)
    test._experiment = type(fit.experiment).__new__(type(fit.experiment))
    test._experiment.__dict__.update({**fit.experiment.__dict__, "metrics": [], "metrics_keys": []})
    test.log_metrics({"test/acc": 0.9}, step=1)
    test.save()

    import pandas as pd

    rows = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert list(rows.columns) == ["step", "test/acc", "train/loss", "val/loss"]
    assert rows["train/loss"].iloc[0] == 0.5 and rows["test/acc"].iloc[1] == 0.9


def test_sqlite_url_creates_the_folder(tmp_path):
    """The Optuna storage resolver makes the database's folder, which SQLite itself would not."""
    from pneumonia_cam.utils.resolvers import sqlite_url

    path = tmp_path / "fresh" / "logs" / "optuna.db"
    assert sqlite_url(str(path)) == f"sqlite:///{path}"
    assert path.parent.is_dir() and not path.exists()
