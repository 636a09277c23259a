"""Decode + grayscale + CLAHE + resize each image once into a uint8 memory-mapped N x H x W array.

The cache holds the output of the data config's `preprocess` steps, i.e. exactly what the augmentations
receive, so serving from it changes no pixel; later epochs (and later runs) never decode a file again. A
pipeline whose augmentations crop should end `preprocess` with a Resize that leaves the crop margin.
Under DDP each rank pre-processes its slice of the images and rank 0 assembles the file (disk_cache).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np

from pneumonia_cam.data.disk_cache import (
    ONE_PROCESS,
    Ranks,
    image_digests,
    load_or_build,
    progress,
    stable_digest,
    transform_config,
)


@dataclass(frozen=True)
class ImageCacheConfig:
    """`data.image_cache`: whether to serve pre-processed images from a memory-mapped cache, and where."""

    enabled: bool = False
    dir: str = "image_cache"


class ImageCache:
    """A reader over the cache: `read(path)` returns that image's pre-processed HxW uint8 array."""

    def __init__(self, file: Path, paths: Sequence[str], key: str) -> None:
        self.file, self.key = file, key
        self.index = {path: row for row, path in enumerate(paths)}
        self.array = np.load(file, mmap_mode="r")

    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        reader: Callable[[str], np.ndarray],
        preprocess: A.Compose,
        directory: str | Path,
        threads: int = 2,
        ranks: Ranks = ONE_PROCESS,
    ) -> ImageCache:
        """Open the cache of these images under this preprocessing, building it first when missing."""
        key = stable_digest(
            {"images": image_digests(paths, reader), "preprocess": transform_config(preprocess)}
        )
        local = threading.local()  # albumentations pipelines keep per-call state: one copy per thread

        def prepared(path: str) -> np.ndarray:
            if not hasattr(local, "transform"):
                local.transform = copy.deepcopy(preprocess)
            return local.transform(image=reader(path))["image"]

        first = prepared(paths[0])

        def fill(out: np.ndarray, rows: range) -> None:
            mine = [paths[row] for row in rows]
            with (
                ThreadPoolExecutor(threads) as pool,
                progress(len(mine), "image cache", enabled=ranks.rank == 0) as bar,
            ):
                for row, image in enumerate(pool.map(prepared, mine)):  # OpenCV releases the GIL
                    if image.shape != first.shape or image.dtype != np.uint8:
                        raise ValueError(
                            f"preprocess must give {first.shape} uint8 images to cache, got {image.shape} "
                            f"{image.dtype} for {mine[row]} (end data.transforms.preprocess with a Resize)"
                        )
                    out[row] = image
                    bar.update(1)

        file = Path(directory) / f"{key}.npy"
        meta = {"images": len(paths), "preprocess": transform_config(preprocess)}
        load_or_build(file, (len(paths), *first.shape), np.uint8, fill, meta, ranks)
        return cls(file, paths, key)

    def read(self, path: str) -> np.ndarray:
        """The pre-processed image of one record (a copy, so transforms may write to it)."""
        return np.array(self.array[self.index[path]])

    def __getstate__(self) -> dict:
        """Pickle for DataLoader workers without copying the array: each worker re-maps the file."""
        return {"file": self.file, "paths": list(self.index), "key": self.key}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["file"], state["paths"], state["key"])
