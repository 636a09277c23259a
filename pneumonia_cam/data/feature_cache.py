"""Pooled features of a frozen backbone, computed once per image (and augmented view) and memory-mapped.

With a frozen backbone every epoch of a plain loop recomputes identical features just to train a linear head.
Here each image goes through the backbone once per *view*: validation and test images once with the eval
transform; training images `views` times (K) with the train transform, view k seeded by (seed, k, image), and
epoch e trains on view e % K. K=1 fixes one augmented draw for the whole run (no augmentation diversity);
a larger K buys diversity at K backbone passes; views: 0 (or an empty augment list) uses the eval transform.
Under DDP each rank extracts a contiguous run of whole batches of every view and rank 0 assembles the file
(disk_cache.load_or_build), byte for byte what one process writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pneumonia_cam.data.dataset import XrayDataset
from pneumonia_cam.data.disk_cache import (
    ONE_PROCESS,
    Ranks,
    image_digests,
    load_or_build,
    progress,
    stable_digest,
    transform_config,
)
from pneumonia_cam.data.sampling import SampleKey
from pneumonia_cam.utils.precision import PRECISIONS

View = tuple[A.Compose, int | None]  # a transform and the seed of its random draws (None: deterministic)


@dataclass(frozen=True)
class FeatureEncoder:
    """What the cache needs of a frozen backbone, built on the model side (models/encoder.py): the digest
    of its weights (part of the key), its feature width, and images -> pooled features."""

    weights: str
    width: int
    encode: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureCacheConfig:
    """`data.feature_cache`: train the head on cached features, where, how many views, precision."""

    enabled: bool = False
    dir: str = "feature_cache"
    views: int = 1
    precision: str = "bf16"
    batch_size: int = 64

    def __post_init__(self) -> None:
        """Reject impossible settings up front."""
        if self.views < 0:
            raise ValueError(f"feature_cache.views must be >= 0, got {self.views}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"feature_cache.precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )


def view_seed(seed: int, view: int, index: int) -> int:
    """Seed of one image's augmentation in one view: independent of worker count and loading order."""
    return int(np.random.SeedSequence([seed, view, index]).generate_state(1)[0])


class _SeededView(Dataset):
    """An image dataset whose augmentation of image i is a fixed function of (seed, view, i)."""

    def __init__(self, dataset: XrayDataset, transform: A.Compose, seed: int | None, view: int) -> None:
        self.dataset = XrayDataset(dataset.records, dataset.reader, copy.deepcopy(transform))
        self.seed, self.view = seed, view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.seed is not None:
            self.dataset.reseed(view_seed(self.seed, self.view, index))
        return self.dataset[index]


class FeatureDataset(Dataset):
    """(pooled features, label) pairs from a K x N x C array; a key's epoch picks the view (int: view 0)."""

    def __init__(self, features: np.ndarray, labels: Sequence[int]) -> None:
        self.features = features
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, key: int | SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = (key.index, key.epoch) if isinstance(key, SampleKey) else (key, 0)
        view = epoch % self.features.shape[0]
        return torch.from_numpy(np.array(self.features[view, index])), self.labels[index]


class FeatureCache:
    """Compute or reuse one frozen encoder's features, keyed by images, transforms, weights, precision."""

    def __init__(
        self,
        config: FeatureCacheConfig,
        encoder: FeatureEncoder,
        num_workers: int = 0,
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.num_workers = num_workers
        self.ranks = ranks
        self.weights = encoder.weights

    def key(self, dataset: XrayDataset, views: Sequence[View], pixels: dict | None = None) -> str:
        """Content key: image bytes, each view's transform and seed, backbone weights, precision."""
        paths = dataset.records["path"].tolist()
        return stable_digest(
            {
                "images": image_digests(paths, dataset.reader),
                "pixels": pixels or {},  # e.g. the key of a pre-processed image cache the reader serves from
                "views": [[transform_config(transform), seed] for transform, seed in views],
                "weights": self.weights,
                "precision": self.config.precision,
            }
        )

    def features(
        self, dataset: XrayDataset, views: Sequence[View], name: str, pixels: dict | None = None
    ) -> np.ndarray:
        """The K x N x C float32 features of `dataset` under each view, memory-mapped from the cache."""
        key = self.key(dataset, views, pixels)
        shape = (len(views), len(dataset), self.encoder.width)

        def fill(out: np.ndarray, rows: range) -> None:
            for index, (transform, seed) in enumerate(views):
                desc = f"{name} features, view {index + 1}/{len(views)}"
                view = _SeededView(dataset, transform, seed, index)
                out[index] = self.extract(Subset(view, rows), desc)

        meta = {
            "split": name,
            "images": len(dataset),
            "views": len(views),
            "precision": self.config.precision,
        }
        path = Path(self.config.dir) / f"{key}.npy"
        return load_or_build(
            path, shape, np.float32, fill, meta, self.ranks, axis=1, block=self.config.batch_size
        )

    def extract(self, dataset: Dataset, desc: str = "features") -> np.ndarray:
        """Run the frozen backbone once over `dataset` (the encoder's eval, inference_mode, autocast)."""
        loader = DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            num_workers=self.num_workers,
            generator=torch.Generator(),  # leaves the global RNG, hence the training shuffle, untouched
        )
        chunks = []
        with progress(len(dataset), desc, enabled=self.ranks.rank == 0) as bar:
            for images, _ in loader:
                chunks.append(self.encoder.encode(images).cpu().numpy())
                bar.update(len(images))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.encoder.width), np.float32)
