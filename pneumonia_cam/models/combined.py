"""Nets that combine passes behind ChestXrayNet's features/head seam: an ensemble and test-time augmentation.

Both return, from `features_and_logits`, feature maps whose CAM (the head's weights applied to them) is the
mean of the parts' CAMs, and logits whose softmax is the mean of the parts' probabilities (log of the mean).
So the predictor, the CAM, the operating point and the ONNX export use them unchanged, and a CAM is always
averaged the same way as the probability it explains. Grad-CAM needs one hooked layer, so they offer CAM only.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pneumonia_cam.data.batch_augment import affine_theta, warp
from pneumonia_cam.models.net import ChestXrayNet

TTA_VIEWS = ("identity", "hflip", "rotate:<degrees>", "zoom:<factor>", "shift:<dx>:<dy>")
TTA_MERGES = ("probability", "logit")


def log_mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the mean of the parts' softmaxes."""
    stacked = torch.stack([torch.log_softmax(part.float(), dim=1) for part in logits])
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(logits))))


def mean_log_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the normalised geometric mean of the parts' softmaxes."""
    return torch.stack([torch.log_softmax(part.float(), dim=1) for part in logits]).mean(0)


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


class TTAView:
    """One test-time view: `identity`, `hflip`, or an affine of the batch stage's kind.

    `rotate:<degrees>` (positive turns counter-clockwise), `zoom:<factor>` (above 1 magnifies the centre) and
    `shift:<dx>:<dy>` (fractions of the width and height) resample the image with the batch stage's geometry
    and fill (`fill`: the model input of a black pixel, as the batch stage pads before normalising); `invert`
    maps a view's feature maps back onto the image's grid (zeros where the view did not see the image).
    """

    def __init__(self, name: str) -> None:
        kind, *values = str(name).split(":")
        counts = {"identity": 0, "hflip": 0, "rotate": 1, "zoom": 1, "shift": 2}
        try:
            if kind not in counts or len(values) != counts[kind]:
                raise ValueError(f"unknown view or wrong number of values ({len(values)})")
            numbers = [float(value) for value in values]
        except ValueError as error:
            raise ValueError(f"TTA view {name!r}: {error}; choose from {list(TTA_VIEWS)}") from None
        if kind == "zoom" and numbers[0] <= 0:
            raise ValueError(f"TTA view {name!r}: the zoom factor must be positive")
        self.kind = kind
        self.degrees = numbers[0] if kind == "rotate" else 0.0
        self.zoom = numbers[0] if kind == "zoom" else 1.0
        self.shift = tuple(numbers) if kind == "shift" else (0.0, 0.0)

    def theta(self, like: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """B x 2 x 3 output->input maps of this view (or of its inverse) for a batch shaped like `like`."""
        degrees, zoom, (dx, dy) = self.degrees, self.zoom, self.shift
        if inverse:  # one kind per view, so the inverse is the same kind with the opposite parameter
            degrees, zoom, dx, dy = -degrees, 1.0 / zoom, -dx, -dy
        values = torch.tensor([degrees, zoom, dx, dy], device=like.device).view(4, 1)
        theta = affine_theta(*values, int(like.shape[-2]), int(like.shape[-1]))
        return theta.to(like.dtype).expand(like.shape[0], -1, -1)

    def apply(self, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """The batch as this view sees it."""
        if self.kind == "identity":
            return x
        if self.kind == "hflip":
            return torch.flip(x, dims=(-1,))
        return warp(x - fill, self.theta(x)) + fill

    def invert(self, maps: torch.Tensor) -> torch.Tensor:
        """This view's feature maps on the original image's grid."""
        if self.kind in ("identity", "hflip"):
            return self.apply(maps, maps.new_zeros(()))  # each is its own inverse
        return warp(maps, self.theta(maps, inverse=True))


class TTANet(CombinedNet):
    """A net seen through several views: merged probabilities; maps mapped back to the image, then averaged.

    `merge=probability` averages the views' probabilities, `merge=logit` their log-probabilities (a normalised
    geometric mean). Either way the CAM is the mean of the views' CAMs mapped back onto the image.
    """

    def __init__(
        self,
        net: nn.Module,
        views: Sequence[str],
        merge: str = "probability",
        fill: Sequence[float] | float = 0.0,
    ) -> None:
        super().__init__()
        if not views:
            raise ValueError(f"TTA needs one or more views of {list(TTA_VIEWS)}")
        if merge not in TTA_MERGES:
            raise ValueError(f"TTA merge {merge!r}: choose one of {list(TTA_MERGES)}")
        self.net = net
        self.views = tuple(str(view) for view in views)
        self.parsed = [TTAView(view) for view in self.views]
        self.merge = merge
        self.register_buffer(
            "fill", torch.as_tensor(fill, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False
        )

    @property
    def features(self) -> nn.Module:
        """The wrapped net's stages (CAM layer lookup)."""
        return self.net.features

    @property
    def head(self) -> nn.Module:
        """The wrapped net's head: its weights turn the averaged maps into the averaged CAM."""
        return self.net.head

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the views' maps (each mapped back) and the merged logits."""
        fill = self.fill.to(x.dtype)
        parts = [self.net.features_and_logits(view.apply(x, fill)) for view in self.parsed]
        maps = torch.stack([view.invert(m) for (m, _), view in zip(parts, self.parsed, strict=True)]).mean(0)
        merge = log_mean_softmax if self.merge == "probability" else mean_log_softmax
        return maps, merge([logits for _, logits in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities of the merged views."""
        return torch.log_softmax(self.features_and_logits(x)[1], dim=1)
