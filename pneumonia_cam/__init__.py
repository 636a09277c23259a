"""pneumonia-cam: train, evaluate, explain and serve pneumonia-vs-normal chest X-ray classifiers.

The public Python API, importable from here (loaded on first use, so `import pneumonia_cam.data` stays light):

    from pneumonia_cam import ImagePreprocessor, load_pretrained
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "InferenceModel": "pneumonia_cam.inference.model",
    "ImagePreprocessor": "pneumonia_cam.data.preprocessor",
    "OperatingPoint": "pneumonia_cam.evaluation.operating_point",
}

__all__ = ["ImagePreprocessor", "InferenceModel", "OperatingPoint", "load_pretrained"]


def __getattr__(name: str) -> Any:
    """Import the public names lazily (PEP 562)."""
    if name == "load_pretrained":
        return __getattr__("InferenceModel").from_checkpoint
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pneumonia_cam' has no attribute {name!r}")
