"""Content-keyed, memory-mapped arrays on disk, written once (by one process, or sharded over DDP ranks)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def _no_barrier() -> None:
    """Nothing to wait for: a single process."""


@dataclass(frozen=True)
class Ranks:
    """The processes that build caches together (DDP: the ranks of one machine) and how they meet.

    `tag` names this group's shard files (same on every rank of the group, unique per run and machine), so
    two runs filling the same key at once never read or delete each other's shards.
    """

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = _no_barrier
    tag: str = ""

    def __post_init__(self) -> None:
        """Reject a rank outside the group."""
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in 0..{self.world - 1}, got {self.rank}")

    def rows(self, total: int, block: int = 1, rank: int | None = None) -> range:
        """A rank's contiguous share of `total` rows, cut at multiples of `block` (whole batches)."""
        rank = self.rank if rank is None else rank
        blocks = -(-total // block)
        start, stop = (min(total, blocks * r // self.world * block) for r in (rank, rank + 1))
        return range(start, stop)

    def shard(self, path: Path, rank: int) -> Path:
        """Where rank `rank` of this group writes its slice of `path`."""
        return path.with_name(f"{path.stem}.shard-{rank}-of-{self.world}.{self.tag}.npy")


ONE_PROCESS = Ranks()

Fill = Callable[[np.ndarray, range], None]  # fill(out, rows): out[..., i, ...] = row rows[i] along the axis


def load_or_build(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Fill,
    meta: dict,
    ranks: Ranks = ONE_PROCESS,
    axis: int = 0,
    block: int = 1,
) -> np.ndarray:
    """Memory-map `path`, building it first when missing: fill a temporary file, then rename it.

    One process fills all rows. Under DDP each rank fills its slice of `axis` (`Ranks.rows`: whole blocks, so
    every row meets the same batch as in one process) into a shard file; after a barrier rank 0 assembles the
    shards into the same file one process would write, removes them, and every rank memory-maps the result.
    Concurrent runs of a sweep may both build one key; the atomic rename keeps the last (identical bytes).
    """
    if ranks.world == 1:
        if not path.is_file():
            _write(path, shape, dtype, lambda out: fill(out, range(shape[axis])), str(os.getpid()), meta)
    else:
        _build_sharded(path, shape, dtype, fill, meta, ranks, axis, block)
    array = np.load(path, mmap_mode="r")
    if array.shape != shape:
        raise RuntimeError(f"cache file {path} holds shape {array.shape}, expected {shape}: delete it")
    return array


def _build_sharded(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Fill,
    meta: dict,
    ranks: Ranks,
    axis: int,
    block: int,
) -> None:
    """Every rank writes its shard, rank 0 assembles them; two barriers whatever each rank saw on disk."""

    def along_axis(rows: range) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(rows.start, rows.stop),)

    if not path.is_file():
        rows = ranks.rows(shape[axis], block)
        shard_shape = (*shape[:axis], len(rows), *shape[axis + 1 :])
        shard = ranks.shard(path, ranks.rank)
        _write(shard, shard_shape, dtype, lambda out: fill(out, rows), ranks.tag)
    ranks.barrier()
    if ranks.rank == 0:
        shards = [ranks.shard(path, rank) for rank in range(ranks.world)]
        if not path.is_file():  # else another run finished it meanwhile: only clean up

            def assemble(out: np.ndarray) -> None:
                for rank, shard in enumerate(shards):
                    out[along_axis(ranks.rows(shape[axis], block, rank))] = np.load(shard, mmap_mode="r")

            _write(path, shape, dtype, assemble, ranks.tag, meta)
        for shard in shards:
            shard.unlink(missing_ok=True)
    ranks.barrier()


def _write(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Callable[[np.ndarray], None],
    tag: str,
    meta: dict | None = None,
) -> None:
    """Fill a temporary .npy next to `path` and rename it there (readers never see a half-written file).

    With `meta`, the `.json` metadata is written before the rename, so a visible cache file always has it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{tag}.partial.npy")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
    fill(array)
    array.flush()
    del array
    if meta is not None:
        meta = {**meta, "format": CACHE_FORMAT, "shape": list(shape), "created": time.time()}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=repr))
    os.replace(partial, path)
