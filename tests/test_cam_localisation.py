"""CAM localises: a small net trained for seconds on blob images puts its CAM peak inside the blob."""

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from pneumonia_cam.data.sources import SyntheticSource
from pneumonia_cam.models.cam import CAM
from pneumonia_cam.models.net import ClassifierHead


class TinyNet(nn.Module):
    """A small fully convolutional net with the same features/head seam as ChestXrayNet."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, padding_mode="reflect"), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.features = nn.Sequential(
            OrderedDict(
                layer1=block(1, 16, 1),
                layer2=block(16, 32, 2),
                layer3=block(32, 32, 1),
                layer4=block(32, 32, 1),
            )
        )
        self.head = ClassifierHead(32, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def test_cam_peak_inside_blob(tmp_path):
    """On >= 90% of held-out blob images the CAM maximum lies within the blob's radius of its centre."""
    torch.manual_seed(0)
    source = SyntheticSource(tmp_path, num_images=400, image_size=64, seed=3)
    records = source.records()
    images = torch.stack([torch.from_numpy(source.read(p)).float()[None] / 255.0 for p in records["path"]])
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(records["label"].to_numpy())
    train = torch.arange(len(labels)) % 4 != 0

    net = TinyNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(3):
        for batch in torch.randperm(int(train.sum())).split(32):
            x, y = images[train][batch], labels[train][batch]
            loss = nn.functional.nll_loss(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    net.eval()
    with torch.no_grad():
        accuracy = (net(images[~train]).argmax(1) == labels[~train]).float().mean()
    assert accuracy >= 0.85

    blobs = source.blobs().set_index("path")
    held_out = [i for i in np.flatnonzero(~train.numpy()) if labels[i] == 1]
    maps = CAM(net, target_layer="layer4")(images[held_out], target_class=1)
    hits = []
    for index, cam in zip(held_out, maps, strict=True):
        blob = blobs.loc[records["path"].iloc[index]]
        y, x = np.unravel_index(int(cam.argmax()), cam.shape)
        hits.append(np.hypot(x - blob.cx, y - blob.cy) <= blob.radius)
    assert len(hits) >= 40
    assert np.mean(hits) >= 0.9, f"CAM peak inside the blob on {np.mean(hits):.0%} of {len(hits)} images"
