"""A map-style dataset over a records table, so any ImageSource plugs into a DataLoader."""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset


class XrayDataset(Dataset):
    """Read each record with the source's reader, transform it, and return (float32 CxHxW, int64 label)."""

    def __init__(
        self, records: pd.DataFrame, reader: Callable[[str], np.ndarray], transform: A.Compose
    ) -> None:
        self.records = records.reset_index(drop=True)
        self.reader = reader
        self.transform = transform
        self._paths = self.records["path"].tolist()
        self._labels = self.records["label"].astype("int64").tolist()

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(image=self.reader(self._paths[index]))["image"]
        return _to_chw_tensor(image), torch.tensor(self._labels[index], dtype=torch.int64)

    def reseed(self, seed: int) -> None:
        """Give this copy of the dataset its own augmentation stream (one per DataLoader worker)."""
        self.transform.set_random_seed(seed)


def _to_chw_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Accept ToTensorV2 output or a plain HxW / HxWxC array, so a pipeline need not end in ToTensorV2."""
    if isinstance(image, torch.Tensor):
        return image.float()
    array = image[:, :, None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
