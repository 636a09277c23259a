"""Nets that combine passes behind ChestXrayNet's features/head seam: an ensemble and test-time augmentation.

Both return, from `features_and_logits`, feature maps whose CAM (the head's weights applied to them) is the
mean of the parts' CAMs, and logits whose softmax is the mean of the parts' probabilities (log of the mean).
So the predictor, the CAM, the operating point and the ONNX export use them unchanged, and a CAM is always
averaged the same way as the probability it explains. Grad-CAM needs one hooked layer, so they offer CAM only.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pneumonia_cam.models.net import ChestXrayNet

TTA_VIEWS = ("identity", "hflip")


def log_mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the mean of the parts' softmaxes."""
    stacked = torch.stack([torch.log_softmax(part.float(), dim=1) for part in logits])
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(logits))))


class MeanCamHead(nn.Module):
    """The members' linear layers side by side, each scaled by 1/k: on concatenated maps, the mean CAM."""

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        weights = [head.fc.weight.detach() for head in heads]
        self.fc = nn.Linear(sum(w.shape[1] for w in weights), weights[0].shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.cat(weights, dim=1) / len(weights))
        self.fc.requires_grad_(False)


class CombinedNet(nn.Module):
    """What the combined nets share: CAM only, no cacheable backbone, inference-only parameter counts."""

    cam_methods = ("cam",)
    backbone_frozen = False  # several passes are not one cacheable feature extractor

    def parameter_counts(self) -> dict[str, int]:
        """Parameter totals for logs (nothing trains in a combined net)."""
        total = sum(p.numel() for p in self.parameters())
        return {"params/total": total, "params/trainable": 0, "params/frozen": total}


class EnsembleNet(CombinedNet):
    """k networks of one architecture: mean probabilities, mean CAM (their maps must share a grid)."""

    def __init__(self, members: Sequence[ChestXrayNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.head = MeanCamHead([member.head for member in members])

    @property
    def features(self) -> nn.Module:
        """The first member's stages, for CAM layer lookup by name (the maps come from every member)."""
        return self.members[0].features

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's maps side by side and the log of the mean probabilities."""
        parts = [member.features_and_logits(x) for member in self.members]
        shapes = {tuple(int(size) for size in maps.shape[2:]) for maps, _ in parts}
        if len(shapes) > 1 and not torch.jit.is_tracing():
            raise ValueError(f"ensemble members give feature grids of different sizes {sorted(shapes)}")
        maps = torch.cat([maps for maps, _ in parts], dim=1)
        return maps, log_mean_softmax([logits for _, logits in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities (log of the mean probability)."""
        return torch.log_softmax(self.features_and_logits(x)[1], dim=1)


def _view(x: torch.Tensor, name: str) -> torch.Tensor:
    """One test-time view of a batch (every view is its own inverse on the feature grid)."""
    return torch.flip(x, dims=(-1,)) if name == "hflip" else x


class TTANet(CombinedNet):
    """A net seen through several views: mean probabilities; maps mapped back to the image, then averaged."""

    def __init__(self, net: nn.Module, views: Sequence[str]) -> None:
        super().__init__()
        unknown = sorted(set(views) - set(TTA_VIEWS))
        if unknown or not views:
            raise ValueError(f"TTA views {list(views)}: choose one or more of {list(TTA_VIEWS)}")
        self.net = net
        self.views = tuple(views)

    @property
    def features(self) -> nn.Module:
        """The wrapped net's stages (CAM layer lookup)."""
        return self.net.features

    @property
    def head(self) -> nn.Module:
        """The wrapped net's head: its weights turn the averaged maps into the averaged CAM."""
        return self.net.head

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the views' maps (each flipped back) and the log of their mean probabilities."""
        parts = [self.net.features_and_logits(_view(x, view)) for view in self.views]
        maps = torch.stack([_view(m, view) for (m, _), view in zip(parts, self.views, strict=True)]).mean(0)
        return maps, log_mean_softmax([logits for _, logits in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities (log of the mean probability over views)."""
        return torch.log_softmax(self.features_and_logits(x)[1], dim=1)
