"""Content-keyed, memory-mapped arrays on disk, written once (by one process) and shared by every run."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from tqdm.auto import tqdm

CACHE_FORMAT = 1


def stable_digest(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value with sorted keys, so equal configs give equal keys."""
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def transform_config(transform: A.BasicTransform | A.Compose) -> dict:
    """The serialised albumentations pipeline: every class and parameter that shapes the pixels."""
    return A.to_dict(transform)


def image_digests(paths: Sequence[str], reader: Callable[[str], np.ndarray], threads: int = 4) -> list[str]:
    """SHA-256 of each image's file bytes (or decoded pixels when a path is not a file, e.g. an npz row)."""

    def one(path: str) -> str:
        file = Path(path)
        data = file.read_bytes() if file.is_file() else np.ascontiguousarray(reader(path)).tobytes()
        return hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(max_workers=threads) as pool:  # hashlib and file reads release the GIL
        return list(pool.map(one, paths))


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, values) of a module."""
    sha = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        sha.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        sha.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes view: bf16 has no numpy
    return sha.hexdigest()


def progress(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar counted in images (``bar.update(batch_size)``), so its rate reads as images/s."""
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled)


def load_or_build(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Callable[[np.ndarray], None],
    meta: dict,
    is_writer: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Memory-map `path`, building it first when missing: the writer fills a temporary file and renames it.

    Under DDP only rank 0 is the writer and every rank waits on `barrier` before reading; concurrent runs of a
    sweep may both build the same key, and the atomic rename keeps whichever finishes last (identical bytes).
    """
    if is_writer and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        fill(array)
        array.flush()
        del array
        meta = {**meta, "format": CACHE_FORMAT, "shape": list(shape), "created": time.time()}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=repr))
        os.replace(partial, path)
    barrier()
    array = np.load(path, mmap_mode="r")
    if array.shape != shape:
        raise RuntimeError(f"cache file {path} holds shape {array.shape}, expected {shape}: delete it")
    return array
