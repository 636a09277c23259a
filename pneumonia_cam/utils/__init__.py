"""Shared plumbing for the entry points."""

from importlib import import_module
from typing import Any

from pneumonia_cam.utils.pylogger import RankedLogger
from pneumonia_cam.utils.resolvers import register_resolvers
from pneumonia_cam.utils.rich_utils import enforce_tags, print_config_tree
from pneumonia_cam.utils.utils import extras, get_metric_value, task_wrapper

register_resolvers()

# Lightning-backed helpers load on first use: the serving path (server, DICOM node, predict) never imports
# Lightning, which costs seconds at every start.
_LAZY = {
    "instantiate_callbacks": "instantiators",
    "instantiate_loggers": "instantiators",
    "log_hyperparameters": "logging_utils",
}


def __getattr__(name: str) -> Any:
    """`from pneumonia_cam.utils import instantiate_loggers` imports its module (and Lightning) only then."""
    if name in _LAZY:
        return getattr(import_module(f"pneumonia_cam.utils.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
