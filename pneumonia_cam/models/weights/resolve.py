"""Resolve a registry name or a local weights file, verify and read it, and say which pre-processing its
features need (`input_spec`), so that data, inference, export and serving all follow the weights."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pneumonia_cam.models.weights.fetch import locate
from pneumonia_cam.models.weights.formats import WeightsFile, check_sha256, read_weights
from pneumonia_cam.models.weights.preprocessing import FAMILIES, IMAGENET, XRV, InputSpec
from pneumonia_cam.models.weights.registry import BY_FILE, REGISTRY, lookup

_PATH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tflite")
# the pre-processing of randomly initialised backbones: TensorFlow-style [-1, 1] for the TFLite MobileNets
INCEPTION = InputSpec("inception", 3, (0.5,) * 3, (0.5,) * 3)
BACKBONE_DEFAULT_INPUT = {"xrv_densenet121": XRV, "mobilenet_v1": INCEPTION, "mobilenet_v2": INCEPTION}


@dataclass(frozen=True)
class LoadedWeights:
    """Tensors for a backbone, where they came from, and the input they were trained on."""

    state: dict[str, torch.Tensor]
    source: str
    input: InputSpec


def is_weights_path(weights: str) -> bool:
    """A local file (a path or a known weights suffix) rather than a registry or torchvision weights name."""
    return "/" in weights or "\\" in weights or weights.lower().endswith(_PATH_SUFFIXES)


def _check_architecture(source: str, declared: str | None, backbone: str) -> None:
    """Refuse weights declared for another architecture before any key is compared."""
    if declared is not None and declared != backbone:
        raise ValueError(
            f"model.weights={source} is for architecture {declared!r}, but model.backbone={backbone!r}: "
            f"set model.backbone={declared}"
        )


def _file_input(found: WeightsFile, backbone: str) -> InputSpec:
    """A local file's pre-processing: declared by the file, by its registry entry, or by what it pickles."""
    if found.input is not None:
        return found.input
    if found.path.name in BY_FILE:
        return FAMILIES[BY_FILE[found.path.name].family]
    if any(name.startswith("torchxrayvision.") for name in found.classes):
        return XRV
    return BACKBONE_DEFAULT_INPUT.get(backbone, IMAGENET)


def _read(path: Path, backbone: str) -> WeightsFile:
    """Read a file and refuse it when it declares another architecture."""
    found = read_weights(path)
    _check_architecture(str(path), found.architecture, backbone)
    return found


def _verify_local(path: Path, backbone: str) -> None:
    """A local file under a registry file name must fit that entry's architecture and checksum."""
    entry = BY_FILE.get(path.name)
    if entry is not None:
        _check_architecture(str(path), entry.architecture, backbone)
        if path.is_file():
            check_sha256(path, entry.sha256)


def load_weights(weights: str, backbone: str, weights_dir: str | os.PathLike | None = None) -> LoadedWeights:
    """Tensors and input spec of a registry name or a local file (torchvision names: the backbone's job)."""
    if weights in REGISTRY:
        entry = lookup(weights)
        _check_architecture(weights, entry.architecture, backbone)
        path = locate(entry, weights_dir)  # verified there
    elif is_weights_path(weights):
        path = Path(weights).expanduser()
        _verify_local(path, backbone)
    else:
        raise KeyError(f"{weights!r} is neither a weights file nor a registry name ({sorted(REGISTRY)})")
    found = _read(path, backbone)
    return LoadedWeights(found.state, str(path), _file_input(found, backbone))


@functools.lru_cache(maxsize=32)
def _cached_input(
    weights: str | None, backbone: str | None, weights_dir: str | None, stamp: float
) -> InputSpec:
    """input_spec keyed on the file's mtime too: a config resolves it once per value, not once per use."""
    default = BACKBONE_DEFAULT_INPUT.get(backbone or "", IMAGENET)
    if weights is None:
        return default
    if weights in REGISTRY:
        entry = lookup(weights)
        if entry.family != "tflite":
            return FAMILIES[entry.family]
        return load_weights(weights, entry.architecture, weights_dir).input
    if not is_weights_path(weights):
        return IMAGENET  # a torchvision weights name (IMAGENET1K_V2 ...)
    entry = BY_FILE.get(Path(weights).name)
    if entry is not None and entry.family != "tflite":
        return FAMILIES[entry.family]  # known by its file name: no need to read it before the backbone does
    return load_weights(weights, backbone or "", weights_dir).input


def input_spec(
    weights: str | None, backbone: str | None, weights_dir: str | os.PathLike | None = None
) -> InputSpec:
    """The pre-processing family the network's input needs, derived from its weights (default: backbone's)."""
    stamp = (
        Path(weights).expanduser().stat().st_mtime
        if weights and Path(weights).expanduser().is_file()
        else 0.0
    )
    return _cached_input(weights, backbone, str(weights_dir) if weights_dir else None, stamp)
