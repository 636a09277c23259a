"""Evaluate a checkpoint on the test split: `python src/eval.py ckpt_path=...` writes metrics.json."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from lightning import LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from src.utils import (  # noqa: E402
    RankedLogger,
    extras,
    instantiate_loggers,
    log_hyperparameters,
    task_wrapper,
)
from src.utils.run_config import load_run_config  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


def resolve_data_config(cfg: DictConfig, train_cfg: DictConfig) -> DictConfig:
    """Use the data config given on the command line, else the one the checkpoint was trained with."""
    data_cfg = cfg.data if cfg.get("data") else train_cfg.data
    with open_dict(data_cfg):
        data_cfg.output_dir = cfg.paths.output_dir
    return data_cfg


def write_metrics(metrics: dict[str, Any], cfg: DictConfig) -> Path:
    """Write the test metrics with the checkpoint they came from, as JSON in the run directory."""
    path = Path(cfg.paths.output_dir, cfg.metrics_file)
    payload = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rebuild the data pipeline and model from the checkpoint, test it and save the metrics."""
    train_cfg = load_run_config(cfg.ckpt_path)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    data_cfg = resolve_data_config(cfg, train_cfg)
    log.info(f"Instantiating datamodule <{data_cfg._target_}>")
    datamodule: LightningDataModule = hydra.utils.instantiate(data_cfg)

    model_cls = hydra.utils.get_class(train_cfg.model._target_)
    log.info(f"Loading model <{model_cls.__name__}> from {cfg.ckpt_path}")
    # the checkpoint's weights replace the backbone's, so skip any ImageNet download
    model: LightningModule = model_cls.load_from_checkpoint(
        cfg.ckpt_path, map_location="cpu", weights_only=True, weights=None
    )

    logger: list[Logger] = instantiate_loggers(cfg.get("logger"))
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, logger=logger)

    object_dict = {"cfg": cfg, "datamodule": datamodule, "model": model, "logger": logger, "trainer": trainer}
    if logger:
        log.info("Logging hyperparameters!")
        log_hyperparameters(object_dict)

    log.info("Starting testing!")
    trainer.test(model=model, datamodule=datamodule)
    metrics = dict(trainer.callback_metrics)
    log.info(f"Metrics written to {write_metrics(metrics, cfg)}")
    return metrics, object_dict


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point: apply extras and evaluate."""
    extras(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
