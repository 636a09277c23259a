"""OmegaConf resolvers the configs use; registered once when `pneumonia_cam.utils` is imported."""

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """W&B runs offline when no API key is available or the user asked for offline mode."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "dryrun", "disabled"}:
        return True
    return not os.environ.get("WANDB_API_KEY")


def wandb_group(task_name: str) -> str:
    """One W&B group per Hydra sweep (`<task>-<sweep dir name>`, shared by its jobs); else the task name."""
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return f"{task_name}-{Path(hydra_cfg.sweep.dir).name}"
    return task_name


def optuna_direction(mode: str) -> str:
    """Translate a Lightning monitor mode (min/max) into Optuna's direction."""
    directions = {"min": "minimize", "max": "maximize"}
    if mode not in directions:
        raise ValueError(f"monitor.mode must be 'min' or 'max', got {mode!r}")
    return directions[mode]


def sqlite_url(path: str) -> str:
    """SQLite URL for `path`, creating its folder first (SQLite does not; the sweeper opens it early)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def register_resolvers() -> None:
    """Register the project's resolvers (idempotent, so tests may import repeatedly)."""
    OmegaConf.register_new_resolver("wandb_offline", wandb_offline, replace=True)
    OmegaConf.register_new_resolver("wandb_group", wandb_group, replace=True)
    OmegaConf.register_new_resolver("optuna_direction", optuna_direction, replace=True)
    OmegaConf.register_new_resolver("sqlite_url", sqlite_url, replace=True)
