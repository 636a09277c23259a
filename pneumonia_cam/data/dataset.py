"""A map-style dataset over a records table, so any ImageSource plugs into a DataLoader."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pneumonia_cam.data.sampling import SampleKey


class XrayDataset(Dataset):
    """Read each record with the source's reader, transform it, and return (CxHxW tensor, int64 label).

    Images come as float32, or as uint8 (`dtype`) when a batch stage augments and normalises them later.
    """

    def __init__(
        self,
        records: pd.DataFrame,
        reader: Callable[[str], np.ndarray],
        transform: A.Compose,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.records = records.reset_index(drop=True)
        self.dtype = dtype
        self.reader = reader
        self.transform = transform
        self._paths = self.records["path"].tolist()
        self._labels = self.records["label"].astype("int64").tolist()

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | SampleKey]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One batch; keys from EpochSampler reseed the augmentation from the batch's first key, so a batch
        is a function of (seed, epoch, position), whichever worker loads it, resumed or not."""
        if keys and isinstance(keys[0], SampleKey):
            self.reseed(keys[0].seed)
            keys = [key.index for key in keys]
        return [self._item(index) for index in keys]

    def _item(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self._paths[index]
        image = _to_chw_tensor(self.transform(image=self.reader(path))["image"])
        if self.dtype == torch.uint8 and image.dtype != torch.uint8:
            raise ValueError(
                f"{path}: data.batch_augment needs uint8 pixels from the per-image steps, got {image.dtype} "
                "(keep Normalize in data.transforms.postprocess, where the batch stage applies it)"
            )
        return image.to(self.dtype), torch.tensor(self._labels[index], dtype=torch.int64)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream from `seed`."""
        self.transform.set_random_seed(seed)


def _to_chw_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Accept ToTensorV2 output or a plain HxW / HxWxC array, so a pipeline need not end in ToTensorV2."""
    if isinstance(image, torch.Tensor):
        return image
    array = image[:, :, None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
