"""Evaluation rebuilds the pipeline from the checkpoint and reproduces the training run's test metrics."""

import json
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from src.eval import evaluate
from src.train import train
from src.utils.run_config import load_run_config


def test_train_eval_round_trip(cfg_train, cfg_eval):
    """Eval of the best checkpoint gives exactly the test metrics that training reported, and saves them."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 2
    HydraConfig().set_config(cfg_train)
    train_metrics, objects = train(cfg_train)
    best = objects["trainer"].checkpoint_callback.best_model_path

    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = best
    HydraConfig().set_config(cfg_eval)
    eval_metrics, _ = evaluate(cfg_eval)

    test_keys = [k for k in train_metrics if k.startswith("test/")]
    assert {"test/acc", "test/auroc", "test/loss", "test/specificity"} <= set(test_keys)
    for key in test_keys:
        assert eval_metrics[key].item() == pytest.approx(train_metrics[key].item(), abs=1e-6), key

    saved = json.loads(Path(cfg_eval.paths.output_dir, "metrics.json").read_text())
    assert saved["ckpt_path"] == str(Path(best).resolve())
    assert saved["metrics"]["test/acc"] == pytest.approx(train_metrics["test/acc"].item(), abs=1e-6)
    # the eval split is written to the eval run directory, not over the training run's
    assert Path(cfg_eval.paths.output_dir, "split.csv").is_file()


def test_load_run_config_rejects_foreign_checkpoint(tmp_path):
    """A checkpoint not written by train.py gets an actionable error instead of a KeyError deep inside."""
    import torch

    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(KeyError, match=r"data=chest_xray"):
        load_run_config(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_run_config(tmp_path / "missing.ckpt")
