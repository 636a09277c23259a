"""The operating point (threshold, temperature, positive class) and its sidecar next to the checkpoint.

The sidecar records the SHA-256 of the checkpoint it was chosen for and the hash of the split whose validation
images chose it, so a checkpoint overwritten later (e.g. `last.ckpt` of a resumed run) never silently inherits
a threshold chosen for other weights.
"""

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumonia_cam.models.decision import DEFAULT_THRESHOLD, POSITIVE_CLASS, Probabilities, decide
from pneumonia_cam.utils.run_config import checkpoint_sha256, training_split_sha256

log = logging.getLogger(__name__)

OPERATING_POINT_SUFFIX = ".operating_point.json"
# where a loaded model takes its operating point from: the sidecar when there is one, the sidecar (required),
# or the defaults (threshold 0.5, temperature 1)
OPERATING_POINT_POLICIES = ("auto", "stored", "default")


@dataclass(frozen=True)
class OperatingPoint:
    """Threshold on P(positive), temperature for the logits, and where they came from."""

    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 1.0
    positive_class: int = POSITIVE_CLASS
    method: str = "fixed"
    chosen_on: str = "config"
    source: str = "default"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled class probabilities (B x classes)."""
        return torch.softmax(logits.float() / self.temperature, dim=1)

    def decide(self, probs: Probabilities) -> Probabilities:
        """The class index per row, by the project's one decision rule."""
        return decide(probs, self.threshold, self.positive_class)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> "OperatingPoint":
        """An operating point from eval's summary or a sidecar (unknown keys are ignored)."""
        return cls(
            threshold=float(values["threshold"]),
            temperature=float(values.get("temperature", 1.0)),
            positive_class=int(values.get("positive_class", POSITIVE_CLASS)),
            method=str(values.get("method", "fixed")),
            chosen_on=str(values.get("chosen_on", "config")),
            source=source,
        )


def tta_key(tta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The test-time views and merge a threshold was chosen with; None for the plain image."""
    views = list((tta or {}).get("views") or ["identity"])
    return (
        None if views == ["identity"] else {"views": views, "merge": (tta or {}).get("merge", "probability")}
    )


def sidecar_path(ckpt_path: str | Path, tta: Mapping[str, Any] | None = None) -> Path:
    """`epoch_007.ckpt` -> `epoch_007.operating_point.json`, or `epoch_007.tta-<hash>.operating_point.json`.

    A threshold belongs to the probabilities it was chosen on, so each set of views keeps its own.
    """
    key = tta_key(tta)
    if key is None:
        return Path(ckpt_path).with_suffix(OPERATING_POINT_SUFFIX)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(ckpt_path).with_suffix(f".tta-{digest}{OPERATING_POINT_SUFFIX}")


def stored_operating_point(
    ckpt_path: str | Path, tta: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The sidecar an earlier eval saved for this checkpoint and views, or None; a stale one is refused."""
    path = sidecar_path(ckpt_path, tta)
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    actual = checkpoint_sha256(ckpt_path)
    if stored.get("checkpoint_sha256") != actual:
        raise ValueError(
            f"{path} was chosen for a checkpoint with SHA-256 {stored.get('checkpoint_sha256')}, but "
            f"{ckpt_path} now has SHA-256 {actual} (overwritten, e.g. by a resumed run): rerun "
            f"`python src/eval.py ckpt_path={ckpt_path} operating_point.method=youden` or delete the sidecar"
        )
    trained_on = training_split_sha256(ckpt_path)
    if trained_on is not None and stored.get("split_sha256") != trained_on:
        raise ValueError(
            f"{path} was chosen on split {stored.get('split_sha256')}, but {ckpt_path} was trained on split "
            f"{trained_on}: a threshold from another split's validation images is refused"
        )
    return stored


def save_operating_point(
    point: dict[str, Any], ckpt_path: str | Path, split_sha256: str, tta: Mapping[str, Any] | None = None
) -> Path:
    """Write the chosen threshold/temperature next to the checkpoint, with its and the split's hashes."""
    path = sidecar_path(ckpt_path, tta)
    record = {
        **point,
        "tta": tta_key(tta),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "checkpoint_sha256": checkpoint_sha256(ckpt_path),
        "split_sha256": split_sha256,
    }
    path.write_text(json.dumps(json_ready(record), indent=2, sort_keys=True))
    return path


def load_operating_point(
    ckpt_path: str | Path, policy: str = "auto", tta: Mapping[str, Any] | None = None
) -> OperatingPoint:
    """The operating point a loaded checkpoint uses under `policy` (auto | stored | default), logged."""
    if policy not in OPERATING_POINT_POLICIES:
        raise ValueError(f"operating_point must be one of {list(OPERATING_POINT_POLICIES)}, got {policy!r}")
    stored = None if policy == "default" else stored_operating_point(ckpt_path, tta)
    if stored is None and policy == "stored":
        raise FileNotFoundError(
            f"No {sidecar_path(ckpt_path, tta).name} next to {ckpt_path}: run `python src/eval.py "
            "ckpt_path=... "
            "operating_point.method=youden` first (with the same tta), or use operating_point=default"
        )
    if stored is None:
        point = OperatingPoint()
        log.info(
            "Operating point: defaults (threshold %.2f, temperature 1; policy %s)", point.threshold, policy
        )
        return point
    point = OperatingPoint.from_dict(stored, source=str(sidecar_path(ckpt_path, tta)))
    log.info(
        "Operating point: threshold %.4f, temperature %.3f, %s on the %s, from %s (policy %s)",
        point.threshold,
        point.temperature,
        point.method,
        point.chosen_on,
        point.source,
        policy,
    )
    return point


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
