"""Train a classifier: `python src/train.py experiment=resnet152_frozen` (any key overridable)."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from lightning import Callback, LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import StochasticWeightAveraging  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.callbacks.run_config import RunConfigInCheckpoint  # noqa: E402
from pneumonia_cam.evaluation.training_curves import write_training_curves  # noqa: E402
from pneumonia_cam.inference.ensemble import load_teacher  # noqa: E402
from pneumonia_cam.utils import (  # noqa: E402
    RankedLogger,
    extras,
    get_metric_value,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    task_wrapper,
)
from pneumonia_cam.utils.reproducible import apply_reproducible  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """`auto`: this run directory's checkpoints/last.ckpt if it exists (a requeued job), else start fresh."""
    if ckpt_path != "auto":
        return ckpt_path
    last = Path(output_dir, "checkpoints", "last.ckpt")
    log.info(f"ckpt_path=auto: {f'resuming from {last}' if last.is_file() else f'no {last}, starting fresh'}")
    return str(last) if last.is_file() else None


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the model, then test the best checkpoint; return the metrics and the built objects."""
    apply_reproducible(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: LightningDataModule = hydra.utils.instantiate(cfg.data)

    teacher = None
    if cfg.model.get("teacher"):
        log.info(f"Loading the distillation teacher <{cfg.model.teacher}>")
        teacher = load_teacher(cfg.model.teacher, cfg.data)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model: LightningModule = hydra.utils.instantiate(cfg.model, teacher=teacher)

    callbacks: list[Callback] = [*instantiate_callbacks(cfg.get("callbacks")), RunConfigInCheckpoint(cfg)]
    if cfg.model.get("ema_decay") is not None and any(
        isinstance(callback, StochasticWeightAveraging) for callback in callbacks
    ):
        raise ValueError(
            "callbacks=swa and model.ema_decay both average weights, and inference would deploy the EMA: "
            "choose one (model.ema_decay=null, or callbacks=default)"
        )
    logger: list[Logger] = instantiate_loggers(cfg.get("logger"))

    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)

    object_dict = {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "logger": logger,
        "trainer": trainer,
    }
    if logger:
        log.info("Logging hyperparameters!")
        log_hyperparameters(object_dict)

    if cfg.get("train"):
        log.info("Starting training!")
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        write_training_curves(trainer, cfg.monitor.metric, cfg.paths.output_dir)
    train_metrics = dict(trainer.callback_metrics)

    if cfg.get("test"):
        log.info("Starting testing!")
        ckpt_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not ckpt_path:
            log.warning("Best ckpt not found! Using current weights for testing...")
            ckpt_path = None
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        log.info(f"Best ckpt path: {ckpt_path}")
    test_metrics = dict(trainer.callback_metrics)

    return {**train_metrics, **test_metrics}, object_dict


def check_ddp_launch(mode: RunMode, launcher: str, strategy: str | None) -> None:
    """Refuse `-m` + strategy=ddp where Lightning would re-run the sweep command per rank (Lightning #11300).

    Only submitit_slurm starts the ranks itself (srun, one task per GPU), so Lightning launches nothing there.
    """
    if mode == RunMode.MULTIRUN and strategy == "ddp" and not launcher.endswith(".SlurmLauncher"):
        raise ValueError(
            "trainer.strategy=ddp re-runs this command for every rank, which inside a multirun (-m) with "
            f"{launcher.rsplit('.', 1)[-1]} re-launches the sweep or the submitit job (Lightning #11300). "
            "Use trainer.strategy=ddp_spawn (trainer=ddp_sim on CPU), or hydra/launcher=submitit_slurm, "
            "where srun starts the ranks."
        )


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    """Entry point: apply extras, train, and hand the optimised metric to a Hydra sweeper."""
    hydra_cfg = HydraConfig.get()
    check_ddp_launch(hydra_cfg.mode, hydra_cfg.launcher._target_, cfg.trainer.get("strategy"))
    extras(cfg)
    metric_dict, _ = train(cfg)
    return get_metric_value(metric_dict=metric_dict, metric_name=cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
