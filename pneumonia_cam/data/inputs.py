"""Expand what a user points a command at (an image, a folder, a CSV manifest) into image paths."""

import os
from pathlib import Path

import pandas as pd

from pneumonia_cam.data.sources import IMAGE_EXTENSIONS


def list_inputs(target: str | os.PathLike) -> list[Path]:
    """Image paths from one file, a folder (searched recursively) or a CSV with a `path` column."""
    target = Path(target).expanduser()
    if not target.exists():
        raise FileNotFoundError(f"Input {target} does not exist")
    if target.is_dir():
        paths = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ValueError(f"Folder {target} holds no images with extensions {list(IMAGE_EXTENSIONS)}")
        return paths
    if target.suffix.lower() == ".csv":
        table = pd.read_csv(target, dtype=str, keep_default_na=False)
        if "path" not in table:
            raise ValueError(f"Manifest {target} needs a 'path' column, it has {list(table.columns)}")
        return [target.parent / Path(p.strip()).expanduser() for p in table["path"]]
    return [target]
