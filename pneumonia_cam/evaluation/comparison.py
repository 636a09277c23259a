"""Pair two models' predictions on the same images and test their differences."""

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from pneumonia_cam.evaluation.bootstrap import paired_bootstrap_diff
from pneumonia_cam.evaluation.report import format_comparison_table
from pneumonia_cam.evaluation.significance import delong_test, mcnemar_exact

REQUIRED = ("path", "label", "probability", "prediction", "threshold")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions.csv from eval.py, checked for the columns the comparison needs."""
    table = pd.read_csv(path, keep_default_na=False)
    missing = [column for column in REQUIRED if column not in table]
    if missing:
        raise ValueError(
            f"{path} lacks column(s) {missing}; expected a predictions.csv written by src/eval.py"
        )
    return table


def pair(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """Join on image path; both files must cover the same images with the same labels."""
    only_a, only_b = set(a["path"]) - set(b["path"]), set(b["path"]) - set(a["path"])
    if only_a or only_b:
        raise ValueError(
            f"{names[0]} and {names[1]} were not evaluated on the same images: {len(only_a)} only in "
            f"{names[0]} (e.g. {sorted(only_a)[:3]}), "
            f"{len(only_b)} only in {names[1]} (e.g. {sorted(only_b)[:3]})"
        )
    paired = a.merge(b, on="path", suffixes=("_a", "_b"), validate="one_to_one")
    conflicting = paired.loc[paired["label_a"] != paired["label_b"], "path"].tolist()
    if conflicting:
        raise ValueError(
            f"Labels differ between the two files for {len(conflicting)} images, e.g. {conflicting[:3]}"
        )
    return paired


def compare(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str], cfg: DictConfig) -> dict[str, Any]:
    """McNemar on the decisions, DeLong on AUROC, paired bootstrap differences for every metric."""
    paired = pair(a, b, names)
    y = paired["label_a"].to_numpy()
    patients = paired["patient_id_a"].astype(str) if "patient_id_a" in paired else None
    grouped = cfg.by_patient and patients is not None and patients.nunique() < len(paired)
    diffs = paired_bootstrap_diff(
        y,
        paired["probability_a"].to_numpy(),
        paired["probability_b"].to_numpy(),
        float(paired["threshold_a"].iloc[0]),
        float(paired["threshold_b"].iloc[0]),
        patients.to_numpy() if grouped else None,
        cfg.n_resamples,
        cfg.confidence,
        cfg.seed,
    )
    return {
        "n": len(paired),
        "bootstrap": diffs,
        "mcnemar": mcnemar_exact(y, paired["prediction_a"].to_numpy(), paired["prediction_b"].to_numpy()),
        "delong": delong_test(y, paired["probability_a"].to_numpy(), paired["probability_b"].to_numpy()),
        "resampled_by": "patient" if grouped else "image",
    }


def comparison_markdown(
    result: dict[str, Any], names: tuple[str, str], sources: tuple[str, str], confidence: float
) -> str:
    """The Performance Comparison page."""
    table = format_comparison_table(
        result["bootstrap"], result["mcnemar"], result["delong"], names, confidence
    )
    return (
        f"# Performance comparison: {names[0]} vs {names[1]}\n\n"
        f"- {names[0]}: `{sources[0]}`\n- {names[1]}: `{sources[1]}`\n"
        f"- {result['n']} paired test images; bootstrap resamples by {result['resampled_by']}\n\n{table}\n"
    )
