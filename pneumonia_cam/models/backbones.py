"""Torchvision backbones cut down to feature-map extractors, with offline-friendly weight loading."""

import re
from collections import OrderedDict
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

import torch
from torch import nn
from torchvision import models

_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_PATH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_HEAD_PREFIXES = ("fc.", "classifier.")
# Prefix of a torchvision DenseNet ("features.conv0.weight") or of a module wrapping ours ("net.features.").
_FEATURES_PREFIX = re.compile(r"^(?:.*?\.)?features\.")
# Old DenseNet checkpoints (the download URLs too) spell "norm1" as "norm.1"; see torchvision densenet.py.
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _resnet_stages(model: nn.Module) -> tuple[OrderedDict[str, nn.Module], int]:
    """Keep the ResNet stem and stages as named children so CAM can hook ``layer4``."""
    return OrderedDict((name, getattr(model, name)) for name in _RESNET_STAGES), model.fc.in_features


def _densenet_stages(model: nn.Module) -> tuple[OrderedDict[str, nn.Module], int]:
    """Flatten DenseNet features and add the ReLU torchvision applies functionally before pooling."""
    stages = OrderedDict(model.features.named_children())
    stages["relu5"] = nn.ReLU()
    return stages, model.classifier.in_features


BACKBONES: dict[str, Callable[[nn.Module], tuple[OrderedDict[str, nn.Module], int]]] = {
    **dict.fromkeys(("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"), _resnet_stages),
    "densenet121": _densenet_stages,
}


def is_weights_path(weights: str) -> bool:
    """Tell a local weights file apart from a torchvision weights name such as ``IMAGENET1K_V2``."""
    return "/" in weights or "\\" in weights or weights.lower().endswith(_PATH_SUFFIXES)


def build_backbone(name: str = "resnet152", weights: str | None = None) -> tuple[nn.Module, int]:
    """Return ``(features, num_features)``: a pooling-free feature-map extractor and its channel count."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    stages, num_features = BACKBONES[name](models.get_model(name, weights=None))
    features = nn.Sequential(stages)
    if weights is not None:
        state, source = (
            (_read_file(Path(weights)), weights) if is_weights_path(weights) else _download(name, weights)
        )
        _load_features(features, state, source)
    return features, num_features


def _download(name: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """Fetch torchvision weights through its cache, failing fast with offline instructions."""
    enum = models.get_model_weights(name)
    valid = list(enum.__members__)
    if weights not in valid:
        raise ValueError(
            f"Unknown weights {weights!r} for {name}; choose one of {valid}, a file path or null"
        )
    entry = enum[weights]
    try:
        state = entry.get_state_dict(progress=True, check_hash=True)
    except (OSError, HTTPException) as err:
        raise RuntimeError(
            f"Could not download {entry} weights for {name} ({err}). On a machine with internet, download "
            f"{entry.url} and either pass model.weights=/path/to/file.pth, or put the file in "
            f"{torch.hub.get_dir()}/checkpoints ($TORCH_HOME/hub/checkpoints), "
            "or use model.weights=null for random initialisation."
        ) from err
    return state, str(entry)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from disk without unpickling arbitrary objects."""
    if not path.is_file():
        raise FileNotFoundError(f"Backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"Could not read backbone weights file {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RuntimeError(f"Backbone weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _features_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a classifier's or wrapper's state dict onto our ``features`` keys, dropping the old head."""
    if any(_FEATURES_PREFIX.match(key) for key in state):
        state = {
            _FEATURES_PREFIX.sub("", k, count=1): v for k, v in state.items() if _FEATURES_PREFIX.match(k)
        }
    else:
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    return {_LEGACY_DENSE_KEY.sub(r"\1\2", k): v for k, v in state.items()}


def _load_features(features: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly so that a wrong file fails loudly instead of training from random weights."""
    try:
        missing, unexpected = features.load_state_dict(_features_state(state), strict=False)
    except RuntimeError as err:
        raise RuntimeError(f"Backbone weights from {source} do not fit: {err}") from err
    if missing or unexpected:
        raise RuntimeError(
            f"Backbone weights from {source} do not fit: {len(missing)} missing keys "
            f"(first: {missing[:5]}), {len(unexpected)} unexpected keys (first: {unexpected[:5]})"
        )
