"""One experiment's test results over several seeds: per-seed rows with CIs, then mean ± std and range."""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pneumonia_cam.evaluation.report import (
    aggregate_runs,
    fmt,
    fmt_interval,
    format_runs_table,
    markdown_table,
)
from pneumonia_cam.utils.run_config import load_run_config

REPORTED = ("accuracy", "sensitivity", "specificity", "f1", "auroc")
WALL_TIME_FILE = (
    "wall_time.json"  # {"train_wall_s": ...} next to the eval folder (scripts/kermany_results.sh)
)


@dataclass(frozen=True)
class SeedRun:
    """What eval.py wrote for one seed's checkpoint, plus that training run's seed and wall time."""

    eval_dir: Path
    seed: int
    threshold: float
    metrics: dict[str, dict[str, float]]
    confusion: tuple[int, int, int, int]  # TN, FP, FN, TP at the threshold
    confidence: float
    train_wall_s: float | None


def expand_runs(patterns: Sequence[str]) -> list[Path]:
    """Eval run folders from paths or glob patterns, sorted; each must hold eval.py's metrics.json."""
    folders = sorted({Path(hit) for pattern in patterns for hit in glob.glob(str(pattern))})
    if not folders:
        raise FileNotFoundError(f"no eval run folder matches {list(patterns)}")
    missing = [str(folder) for folder in folders if not (folder / "metrics.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no metrics.json (written by src/eval.py) in {missing}")
    return folders


def load_seed_run(eval_dir: Path) -> SeedRun:
    """Read metrics.json and predictions.csv of one eval run; the seed comes from the checkpoint's config."""
    result = json.loads((eval_dir / "metrics.json").read_text())
    predictions = pd.read_csv(eval_dir / "predictions.csv")
    label, predicted = predictions["label"].astype(int), predictions["prediction"].astype(int)
    confusion = tuple(
        int(((label == t) & (predicted == p)).sum()) for t, p in ((0, 0), (0, 1), (1, 0), (1, 1))
    )
    wall_file = eval_dir.parent / WALL_TIME_FILE
    wall = json.loads(wall_file.read_text())["train_wall_s"] if wall_file.is_file() else None
    return SeedRun(
        eval_dir=eval_dir,
        seed=int(load_run_config(result["ckpt_path"]).seed),
        threshold=float(result["operating_point"]["threshold"]),
        metrics=result["metrics"],
        confusion=confusion,
        confidence=float(result["confidence"]),
        train_wall_s=None if wall is None else float(wall),
    )


def seeds_markdown(runs: Sequence[SeedRun]) -> str:
    """A per-seed table (each metric's value and CI, confusion counts), then the across-seed summary."""
    header = ["seed", "threshold", *REPORTED, "TN / FP / FN / TP", "train min"]
    rows = [
        [
            str(run.seed),
            fmt(run.threshold),
            *(_with_interval(run.metrics[name]) for name in REPORTED),
            " / ".join(str(count) for count in run.confusion),
            "n/a" if run.train_wall_s is None else f"{run.train_wall_s / 60:.1f}",
        ]
        for run in runs
    ]
    summary = aggregate_runs([{name: run.metrics[name]["value"] for name in REPORTED} for run in runs])
    confidence = f"{runs[0].confidence:.0%}" if runs else "95%"
    return (
        f"Per seed (value [{confidence} bootstrap CI]):\n\n{markdown_table(header, rows)}\n\n"
        f"Across seeds:\n\n{format_runs_table(summary, unit='seeds')}\n"
    )


def _with_interval(metric: dict[str, float]) -> str:
    """ "0.912 [0.889, 0.934]"."""
    return f"{fmt(metric['value'])} {fmt_interval(metric['low'], metric['high'])}"
