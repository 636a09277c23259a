"""Class Activation Maps: one base class, one overridden step (how each channel of a layer is weighted)."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# a class per batch or per image, a rule applied to the logits (e.g. a decision threshold), or None: arg-max
TargetClass = int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Run a block in eval mode, then restore every submodule's own train/eval flag exactly."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextmanager
def captured_activations(layer: nn.Module, track_grad: bool) -> Iterator[list[torch.Tensor]]:
    """Record a layer's output through a forward hook that is always removed, even on error."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if track_grad and not output.requires_grad:
            # a frozen backbone builds no graph: make the activation a leaf so gradients can reach it
            output = output.detach().requires_grad_(True)
        captured.append(output)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def resolve_layer(net: nn.Module, target_layer: str | None) -> nn.Module:
    """The hooked layer by name in the backbone (``layer4``) or the net (``features.layer4``); None: the
    whole feature extractor, whose output feeds the head."""
    if target_layer is None:
        return net.features
    for root in (net.features, net):
        try:
            return root.get_submodule(target_layer)
        except AttributeError:
            continue
    names = [name for name, _ in net.features.named_children()]
    raise ValueError(f"No layer {target_layer!r} in the backbone; top-level stages are {names}")


# how raw maps become [0, 1] maps at the image size unless a caller's CAM options say otherwise
FINISH_DEFAULTS = {"upsample_mode": "bilinear", "relu": True, "normalize": True}


def finish_options(cam_options: dict) -> dict:
    """postprocess()'s keyword arguments from a caller's CAM options (the defaults where they say nothing)."""
    return {key: cam_options.get(key, default) for key, default in FINISH_DEFAULTS.items()}


def postprocess(
    raw: torch.Tensor, size: Sequence[int] | None, upsample_mode: str, relu: bool, normalize: bool
) -> torch.Tensor:
    """Upsample B x h x w maps to the image size, optionally ReLU them and min-max each to [0, 1]."""
    maps = raw.unsqueeze(1)
    if size is not None:
        align = False if upsample_mode in {"bilinear", "bicubic"} else None
        maps = F.interpolate(maps, size=tuple(size), mode=upsample_mode, align_corners=align)
    maps = maps.squeeze(1)
    if relu:
        maps = maps.clamp_min(0)
    if normalize:
        flat = maps.flatten(1)
        low, high = flat.min(1).values, flat.max(1).values
        maps = (maps - low[:, None, None]) / (high - low).clamp_min(1e-12)[:, None, None]
    return maps


class BaseCAM:
    """Weighted sum of a layer's feature maps for a target class; subclasses decide the channel weights."""

    needs_gradients = False

    def __init__(
        self,
        net: nn.Module,
        target_layer: str | None = None,
        upsample_mode: str = FINISH_DEFAULTS["upsample_mode"],
        relu: bool = FINISH_DEFAULTS["relu"],
        normalize: bool = FINISH_DEFAULTS["normalize"],
    ) -> None:
        self.net = net
        self.layer = resolve_layer(net, target_layer)
        self.upsample_mode = upsample_mode
        self.relu = relu
        self.normalize = normalize

    def channel_weights(
        self, activations: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Return B x K weights for the K channels of `activations` (the one step subclasses override)."""
        raise NotImplementedError

    def raw_maps(
        self, images: torch.Tensor, target_class: TargetClass = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Un-normalised, un-upsampled maps (B x h x w), the logits and the target classes."""
        with preserved_modes(self.net), torch.set_grad_enabled(self.needs_gradients):
            with captured_activations(self.layer, track_grad=self.needs_gradients) as captured:
                logits = self.net.head.logits(
                    self.net.head(self.net.forward_features(images), pre_logits=True)
                )
            activations = captured[-1]
            targets = self.targets(target_class, logits)
            weights = self.channel_weights(activations, logits, targets)
            maps = torch.einsum("bk,bkhw->bhw", weights, activations)
        return maps.detach(), logits.detach(), targets

    @property
    def reuses_pass(self) -> bool:
        """True when the maps come from the predictor's own pass: no gradients, the layer feeding the head."""
        stages = list(self.net.features.children())
        return not self.needs_gradients and self.layer in (self.net.features, stages[-1])

    def from_features(
        self, features: torch.Tensor, logits: torch.Tensor, target_class: TargetClass = None
    ) -> torch.Tensor | None:
        """Raw maps from a pass already made (the head's input maps and the logits), or None when this
        method or layer needs a pass of its own (gradients, or a layer that does not feed the head)."""
        if not self.reuses_pass:
            return None
        targets = self.targets(target_class, logits)
        with torch.no_grad():
            return torch.einsum("bk,bkhw->bhw", self.channel_weights(features, logits, targets), features)

    def __call__(
        self,
        images: torch.Tensor,
        target_class: TargetClass = None,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """B x H x W maps at `output_size` (default: the input's size), for the predicted class by default."""
        raw, _, _ = self.raw_maps(images, target_class)
        return self.finish(raw, output_size if output_size is not None else images.shape[-2:])

    def finish(self, raw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Upsample raw maps to `size` with this CAM's ReLU / normalisation options."""
        return postprocess(raw, size, self.upsample_mode, self.relu, self.normalize)

    @staticmethod
    def targets(target_class: TargetClass, logits: torch.Tensor) -> torch.Tensor:
        """One target per image: given, chosen from the logits by a callable, or else the arg-max class."""
        if target_class is None:
            return logits.argmax(dim=1)
        if callable(target_class):
            return target_class(logits)
        targets = torch.as_tensor(target_class, device=logits.device).long().reshape(-1)
        return targets.expand(logits.shape[0]) if targets.numel() == 1 else targets


class CAM(BaseCAM):
    """Zhou et al. 2016: the head's weights for the target class; no gradients, so frozen backbones work."""

    def channel_weights(
        self, activations: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The linear head's row for each image's target class."""
        weight = self.net.head.fc.weight
        if activations.shape[1] != weight.shape[1]:
            raise ValueError(
                f"CAM needs the layer that feeds the pooled linear head ({weight.shape[1]} channels), got "
                f"{activations.shape[1]} channels: hook the last backbone stage or use method=gradcam"
            )
        return weight[targets]


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: spatially averaged gradients of the target logit, for any layer and head."""

    needs_gradients = True

    def channel_weights(
        self, activations: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Gradient of each image's target logit w.r.t. the layer, averaged over space."""
        score = logits.gather(1, targets[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activations)
        return grads.mean(dim=(2, 3))


CAM_METHODS: dict[str, type[BaseCAM]] = {"cam": CAM, "gradcam": GradCAM}


def build_cam(method: str, net: nn.Module, **kwargs) -> BaseCAM:
    """Pick a CAM method by its config name."""
    if method not in CAM_METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    return CAM_METHODS[method](net, **kwargs)
