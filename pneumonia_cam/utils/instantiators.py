"""Build callbacks and loggers from their config groups."""

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)


def _instantiate_group(group_cfg: DictConfig | None, kind: str) -> list:
    """Instantiate every `_target_` entry of a config group; `null` entries are switched-off members."""
    if not group_cfg:
        log.warning(f"No {kind} configs found! Skipping...")
        return []
    if not isinstance(group_cfg, DictConfig):
        raise TypeError(f"{kind.capitalize()} config must be a DictConfig!")
    objects = []
    for name, entry in group_cfg.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            log.info(f"Instantiating {kind} <{entry._target_}> ({name})")
            objects.append(hydra.utils.instantiate(entry))
    return objects


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[Callback]:
    """Instantiate the callbacks of `cfg.callbacks`."""
    return _instantiate_group(callbacks_cfg, "callback")


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Instantiate the loggers of `cfg.logger` (W&B: `pneumonia_cam.utils.logging_utils.WandbLogger`)."""
    return _instantiate_group(logger_cfg, "logger")
