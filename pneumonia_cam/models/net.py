"""Backbone + linear head classifier with a timm-style features/head seam for CAMs and feature caches."""

from collections.abc import Iterator, Sequence
from typing import Self

import torch
from torch import nn

from pneumonia_cam.models.backbones import build_backbone


class ClassifierHead(nn.Module):
    """Global-average-pool, optional dropout and a linear layer, emitting log-probabilities for NLLLoss."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Raw class scores from pooled features, for CAM weighting and cached-feature training."""
        return self.fc(self.dropout(pooled))

    def forward(self, maps: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool feature maps, then return the pooled vector or the class log-probabilities."""
        pooled = self.pool(maps)
        return pooled if pre_logits else self.from_pooled(pooled)

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities from pooled features: the whole head after the pool, for feature caches."""
        return self.log_softmax(self.logits(pooled))


class ChestXrayNet(nn.Module):
    """Chest X-ray classifier whose frozen backbone parts stay frozen and in eval mode while training."""

    def __init__(
        self,
        backbone: str = "resnet152",
        weights: str | None = None,
        num_classes: int = 2,
        freeze_backbone: bool = True,
        unfreeze: Sequence[str] = (),
        dropout: float = 0.0,
        weights_dir: str | None = None,
    ) -> None:
        super().__init__()
        # input_spec: the pre-processing the loaded weights need (None: random weights, any input goes)
        self.features, num_features, self.input_spec = build_backbone(backbone, weights, weights_dir)
        self.head = ClassifierHead(num_features, num_classes, dropout)
        stages = [name for name, _ in self.features.named_children()]
        unknown = sorted(set(unfreeze) - set(stages))
        if unknown:
            raise ValueError(f"Cannot unfreeze {unknown}: {backbone} stages are {stages}")
        self._frozen_stages = [name for name in stages if name not in unfreeze] if freeze_backbone else []
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.train()  # Lightning never calls .train() before fitting, so frozen stages must start in eval.

    def frozen_modules(self) -> Iterator[nn.Module]:
        """Yield the backbone stages that are neither trained nor allowed to update BatchNorm statistics."""
        return (getattr(self.features, name) for name in self._frozen_stages)

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone stage trains, so its features are a fixed function of the input."""
        return len(self._frozen_stages) == len(self.features)

    def parameter_counts(self) -> dict[str, int]:
        """Parameter totals for experiment logs, so frozen vs fine-tuned runs are easy to tell apart."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return {"params/total": total, "params/trainable": trainable, "params/frozen": total - trainable}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should see."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> Self:
        """Switch modes but keep frozen stages in eval so their BatchNorm running stats never change."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature maps (B x C x h x w), the input of Class Activation Maps."""
        return self.features(x)

    def forward_head(self, maps: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class log-probabilities, or the pooled feature vector when ``pre_logits``."""
        return self.head(maps, pre_logits=pre_logits)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector (B x C) the linear layer sees: what a feature cache stores."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps and raw logits of one pass: decisions come from the logits, CAMs from the maps."""
        maps = self.forward_features(x)
        return maps, self.head.logits(self.forward_head(maps, pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities for a batch of images."""
        return self.forward_head(self.forward_features(x))
