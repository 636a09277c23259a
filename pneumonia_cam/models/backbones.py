"""Backbones cut down to feature-map extractors (torchvision, TorchXRayVision's DenseNet, TensorFlow's
MobileNets), with offline-first weight loading through the weights registry."""

import re
from collections import OrderedDict
from collections.abc import Callable
from http.client import HTTPException

import torch
from torch import nn
from torchvision import models

from pneumonia_cam.models.mobilenet import mobilenet_v1_stages, mobilenet_v2_stages
from pneumonia_cam.models.weights.preprocessing import IMAGENET, InputSpec
from pneumonia_cam.models.weights.registry import REGISTRY as REGISTRY_NAMES
from pneumonia_cam.models.weights.resolve import is_weights_path, load_weights

_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_HEAD_PREFIXES = ("fc.", "classifier.")
# Prefix of a torchvision DenseNet ("features.conv0.weight") or of a module wrapping ours ("net.features.").
_FEATURES_PREFIX = re.compile(r"^(?:.*?\.)?features\.")
# Old DenseNet checkpoints (the download URLs too) spell "norm1" as "norm.1"; see torchvision densenet.py.
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
Stages = tuple[OrderedDict[str, nn.Module], int]


def _resnet_stages(model: nn.Module) -> tuple[OrderedDict[str, nn.Module], int]:
    """Keep the ResNet stem and stages as named children so CAM can hook ``layer4``."""
    return OrderedDict((name, getattr(model, name)) for name in _RESNET_STAGES), model.fc.in_features


def _densenet_stages(model: nn.Module) -> tuple[OrderedDict[str, nn.Module], int]:
    """Flatten DenseNet features and add the ReLU torchvision applies functionally before pooling."""
    stages = OrderedDict(model.features.named_children())
    stages["relu5"] = nn.ReLU()
    return stages, model.classifier.in_features


def _torchvision(name: str, cut: Callable[[nn.Module], Stages]) -> Callable[[], Stages]:
    """A torchvision architecture (random weights) cut into stages."""
    return lambda: cut(models.get_model(name, weights=None))


def _resnet10() -> Stages:
    """ResNet-10 (one BasicBlock per stage, as timm's and MONAI's): the smallest ResNet, with the same stages
    and 512 features as ResNet-18 at under half its cost; no published weights (null or a file)."""
    return _resnet_stages(models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1]))


def _xrv_densenet121() -> Stages:
    """TorchXRayVision's DenseNet-121: torchvision's layout with a one-channel first convolution."""
    model = models.densenet121(weights=None)
    model.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return _densenet_stages(model)


BACKBONES: dict[str, Callable[[], Stages]] = {
    "resnet10": _resnet10,
    **{
        name: _torchvision(name, _resnet_stages)
        for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    },
    "densenet121": _torchvision("densenet121", _densenet_stages),
    "xrv_densenet121": _xrv_densenet121,
    "mobilenet_v2": mobilenet_v2_stages,
    "mobilenet_v1": mobilenet_v1_stages,
}


def build_backbone(
    name: str = "resnet152", weights: str | None = None, weights_dir: str | None = None
) -> tuple[nn.Module, int, InputSpec | None]:
    """`(features, num_features, input)`: a pooling-free feature-map extractor, its channel count, and the
    input its weights were trained on (None for random weights)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    stages, num_features = BACKBONES[name]()
    features = nn.Sequential(stages)
    if weights is None:
        return features, num_features, None
    if is_weights_path(weights) or weights in REGISTRY_NAMES:
        loaded = load_weights(weights, name, weights_dir)
        state, source, spec = loaded.state, loaded.source, loaded.input
    else:
        (state, source), spec = _download(name, weights), IMAGENET
    _load_features(features, state, source)
    return features, num_features, spec


def _download(name: str, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """Fetch torchvision weights through its cache, failing fast with offline instructions."""
    if name not in models.list_models():
        raise ValueError(f"{name} has no published weights; use model.weights=null or a file path")
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
