"""Send the run's configuration and provenance to every active logger."""

from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_only

from pneumonia_cam.utils.pylogger import RankedLogger
from pneumonia_cam.utils.run_config import plain_config

log = RankedLogger(__name__, rank_zero_only=True)


@rank_zero_only
def log_hyperparameters(object_dict: dict[str, Any]) -> None:
    """Log the composed config and parameter counts (the data module adds its split hash at setup)."""
    cfg = plain_config(object_dict["cfg"])
    trainer = object_dict["trainer"]
    model = object_dict["model"]
    if not trainer.logger:
        log.warning("Logger not found! Skipping hyperparameter logging...")
        return

    hparams = {key: cfg.get(key) for key in ("model", "data", "trainer", "callbacks", "extras")}
    hparams.update({key: cfg.get(key) for key in ("task_name", "tags", "ckpt_path", "seed", "monitor")})
    hparams.update(model.net.parameter_counts())

    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
