"""Task plumbing shared by the entry points: extras, the task wrapper and metric lookup."""

import warnings
from collections.abc import Callable
from functools import wraps
from importlib.util import find_spec
from typing import Any

from omegaconf import DictConfig

from pneumonia_cam.utils import rich_utils
from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)


def extras(cfg: DictConfig) -> None:
    """Apply the optional conveniences of `cfg.extras` before the task starts."""
    if not cfg.get("extras"):
        log.warning("Extras config not found! <cfg.extras=null>")
        return
    if cfg.extras.get("ignore_warnings"):
        log.info("Disabling python warnings! <cfg.extras.ignore_warnings=True>")
        warnings.filterwarnings("ignore")
    if cfg.extras.get("enforce_tags"):
        rich_utils.enforce_tags(cfg, save_to_file=True)
    if cfg.extras.get("print_config"):
        rich_utils.print_config_tree(cfg, save_to_file=True)


def close_wandb() -> None:
    """End the W&B run so the next job of a multirun starts its own run instead of merging into this one."""
    if find_spec("wandb"):
        import wandb

        if wandb.run:
            log.info("Closing wandb!")
            wandb.finish()


def task_wrapper(task_func: Callable) -> Callable:
    """Run a task so that a failure is logged with its run directory and loggers are always closed."""

    @wraps(task_func)
    def wrap(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            return task_func(cfg=cfg)
        except Exception:
            log.exception("")
            raise
        finally:
            log.info(f"Output dir: {cfg.paths.output_dir}")
            close_wandb()

    return wrap


def get_metric_value(metric_dict: dict[str, Any], metric_name: str | None) -> float | None:
    """Return the value a Hydra sweeper optimises; a missing metric is a config error, not a silent None."""
    if not metric_name:
        log.info("Metric name is None! Skipping metric value retrieval...")
        return None
    if metric_name not in metric_dict:
        raise ValueError(
            f"Metric value not found! <metric_name={metric_name}>\n"
            "Make sure `optimized_metric` in `hparams_search` config is correct!"
        )
    value = metric_dict[metric_name].item()
    log.info(f"Retrieved metric value! <{metric_name}={value}>")
    return value
