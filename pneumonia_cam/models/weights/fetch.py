"""Where weights files live (one cache folder every entry point looks in) and how they get there."""

from __future__ import annotations

import os
import urllib.error
from http.client import HTTPException
from pathlib import Path

import torch

from pneumonia_cam.models.weights.formats import check_sha256
from pneumonia_cam.models.weights.registry import WeightsEntry

ENV_DIR = "PNEUMONIA_CAM_WEIGHTS_DIR"


def default_weights_dir() -> Path:
    """$PNEUMONIA_CAM_WEIGHTS_DIR, else <$XDG_CACHE_HOME or ~/.cache>/pneumonia_cam/weights."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "pneumonia_cam" / "weights"


def search_dirs(weights_dir: str | os.PathLike | None) -> list[Path]:
    """The weights folder, then torch hub's checkpoint cache (torchvision's own downloads)."""
    first = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    return [first, Path(torch.hub.get_dir()) / "checkpoints"]


def offline_instructions(entry: WeightsEntry, weights_dir: str | os.PathLike | None) -> str:
    """What a user without internet on this machine does: the URL, the checksum and where the file goes."""
    target = search_dirs(weights_dir)[0] / entry.file
    checksum = f"SHA-256 starting {entry.sha256}" if entry.sha256 else "no published SHA-256"
    return (
        f"weights {entry.name!r} ({entry.description}) are not on this machine. Download\n  {entry.url}\n"
        f"({checksum}, licence {entry.licence}) on a machine with internet and copy it to\n  {target}\n"
        f"(or set {ENV_DIR} / paths.weights_dir to the folder holding {entry.file}), "
        f"or run: python src/fetch_weights.py name={entry.name}"
    )


def locate(entry: WeightsEntry, weights_dir: str | os.PathLike | None) -> Path:
    """The verified local file of a registry entry; else FileNotFoundError with offline instructions."""
    for folder in search_dirs(weights_dir):
        path = folder / entry.file
        if path.is_file():
            check_sha256(path, entry.sha256)
            return path
    raise FileNotFoundError(offline_instructions(entry, weights_dir))


def fetch(entry: WeightsEntry, weights_dir: str | os.PathLike | None, progress: bool = True) -> Path:
    """Download an entry into the weights folder (progress bar, checksum verified) unless it is there."""
    try:
        return locate(entry, weights_dir)
    except FileNotFoundError:
        target = search_dirs(weights_dir)[0] / entry.file
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        torch.hub.download_url_to_file(entry.url, str(partial), hash_prefix=None, progress=progress)
    except (OSError, HTTPException, urllib.error.URLError) as err:
        partial.unlink(missing_ok=True)
        raise ConnectionError(
            f"Could not download {entry.url} ({err}).\n{offline_instructions(entry, weights_dir)}"
        ) from err
    try:
        check_sha256(partial, entry.sha256)
    except RuntimeError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target
