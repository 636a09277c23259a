"""Float MobileNetV1/V2 1.0 feature nets shaped like Google's TFLite graphs, so their weights load unchanged.

The graphs were trained in TensorFlow: every convolution pads 'SAME' (on stride 2 the extra pixel goes
right/bottom, unlike torchvision's symmetric padding), carries its folded BatchNorm as a bias, and is followed
by ReLU6 except the linear bottleneck projections of V2. Inputs are RGB scaled to about [-1, 1]
(``(x_uint8 - 128) / 128`` for the quantized files). ``nn.Sequential(stages)`` maps B x 3 x H x W to the last
feature map before global pooling (H / 32 on each side).

MobileNetV2 stages (channels, side at 224 px):

- ``stem``: 3x3 stride-2 conv to 32 and the first, unexpanded bottleneck (16, 112)
- ``stage1``: bottlenecks 1-2 (24, 56)
- ``stage2``: bottlenecks 3-5 (32, 28)
- ``stage3``: bottlenecks 6-12 (64 then 96, 14)
- ``stage4``: bottlenecks 13-16 (160 then 320, 7)
- ``head``: the 1x1 conv to 1280 (1280, 7)

MobileNetV1 stages: ``stem`` (3x3 stride-2 conv and separable block 1: 64, 112), ``stage1`` (blocks 2-3: 128,
56), ``stage2`` (blocks 4-5: 256, 28), ``stage3`` (blocks 6-11: 512, 14), ``stage4`` (blocks 12-13: 1024, 7).
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# (expansion, out channels, repeats, first stride) of each bottleneck run, per stage, as in the V2 paper
_V2_STAGES: dict[str, list[tuple[int, int, int, int]]] = {
    "stage1": [(6, 24, 2, 2)],
    "stage2": [(6, 32, 3, 2)],
    "stage3": [(6, 64, 4, 2), (6, 96, 3, 1)],
    "stage4": [(6, 160, 3, 2), (6, 320, 1, 1)],
}
# (out channels, repeats, first stride) of each separable-block run, per stage
_V1_STAGES: dict[str, list[tuple[int, int, int]]] = {
    "stage1": [(128, 2, 2)],
    "stage2": [(256, 2, 2)],
    "stage3": [(512, 6, 2)],
    "stage4": [(1024, 2, 2)],
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one axis: output ``ceil(size / stride)``, the odd pixel after."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, a (BatchNorm-folded) bias and an optional fused ReLU6."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        *,
        relu6: bool = True,
    ) -> None:
        # at stride 1 'SAME' is symmetric whatever the size, so the conv pads itself (no copy)
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=True)
        self.relu6 = relu6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad from the input's own size on strided convs, so any resolution (odd too) matches TensorFlow."""
        if self.stride[0] > 1:
            top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        x = super().forward(x)
        return F.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand, 3x3 depthwise, linear 1x1 project, identity add if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = SameConv2d(in_channels, hidden) if expansion != 1 else nn.Identity()
        self.depthwise = SameConv2d(hidden, hidden, 3, stride, groups=hidden)
        self.project = SameConv2d(hidden, out_channels, relu6=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the input back only where the graph has an ADD (stride 1, same channels)."""
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class SeparableBlock(nn.Sequential):
    """MobileNetV1 block: 3x3 depthwise then 1x1 pointwise conv, both ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            OrderedDict(
                depthwise=SameConv2d(in_channels, in_channels, 3, stride, groups=in_channels),
                pointwise=SameConv2d(in_channels, out_channels),
            )
        )


def mobilenet_v2_stages() -> tuple[OrderedDict[str, nn.Module], int]:
    """MobileNetV2 1.0 as named stages down to the 1280-channel map, so fine-tuning can unfreeze the last."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(SameConv2d(3, 32, 3, 2), InvertedResidual(32, 16, 1, 1))
    )
    channels = 16
    for name, runs in _V2_STAGES.items():
        blocks = []
        for expansion, out_channels, repeats, stride in runs:
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
        stages[name] = nn.Sequential(*blocks)
    stages["head"] = SameConv2d(channels, 1280)
    return stages, 1280


def mobilenet_v1_stages() -> tuple[OrderedDict[str, nn.Module], int]:
    """MobileNetV1 1.0 as named stages down to the 1024-channel map, so fine-tuning can unfreeze the last."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(SameConv2d(3, 32, 3, 2), SeparableBlock(32, 64, 1))
    )
    channels = 64
    for name, runs in _V1_STAGES.items():
        blocks = []
        for out_channels, repeats, stride in runs:
            for i in range(repeats):
                blocks.append(SeparableBlock(channels, out_channels, stride if i == 0 else 1))
                channels = out_channels
        stages[name] = nn.Sequential(*blocks)
    return stages, channels
