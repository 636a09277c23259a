"""The chosen threshold and temperature live next to their checkpoint, so every later command reuses them."""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

OPERATING_POINT_SUFFIX = ".operating_point.json"


def sidecar_path(ckpt_path: str | Path) -> Path:
    """`epoch_007.ckpt` -> `epoch_007.operating_point.json` in the same folder."""
    return Path(ckpt_path).with_suffix(OPERATING_POINT_SUFFIX)


def stored_operating_point(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The threshold/temperature an earlier eval saved next to this checkpoint, if any."""
    path = sidecar_path(ckpt_path)
    return json.loads(path.read_text()) if path.is_file() else None


def save_operating_point(point: dict[str, Any], ckpt_path: str | Path, source: str) -> Path:
    """Write the chosen threshold/temperature next to the checkpoint for predict.py and later evals."""
    path = sidecar_path(ckpt_path)
    path.write_text(json.dumps(json_ready({**point, "checkpoint": source}), indent=2, sort_keys=True))
    return path


def json_ready(value: Any) -> Any:
    """NaN becomes null, numpy scalars become Python numbers, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
