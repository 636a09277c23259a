"""Shared plumbing for the entry points."""

from pneumonia_cam.utils.instantiators import instantiate_callbacks, instantiate_loggers
from pneumonia_cam.utils.logging_utils import log_hyperparameters
from pneumonia_cam.utils.pylogger import RankedLogger
from pneumonia_cam.utils.resolvers import register_resolvers
from pneumonia_cam.utils.rich_utils import enforce_tags, print_config_tree
from pneumonia_cam.utils.utils import extras, get_metric_value, task_wrapper

register_resolvers()

__all__ = [
    "RankedLogger",
    "enforce_tags",
    "extras",
    "get_metric_value",
    "instantiate_callbacks",
    "instantiate_loggers",
    "log_hyperparameters",
    "print_config_tree",
    "register_resolvers",
    "task_wrapper",
]
