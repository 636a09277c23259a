"""Everything eval.py reports: predictions per split, operating point, calibration, CIs, plots, report."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from pneumonia_cam.evaluation.bootstrap import bootstrap_ci
from pneumonia_cam.evaluation.calibration import apply_temperature, fit_temperature
from pneumonia_cam.evaluation.metrics import expected_calibration_error
from pneumonia_cam.evaluation.operating_point import OperatingPoint, sidecar_path, stored_operating_point
from pneumonia_cam.evaluation.plots import (
    plot_confusion_matrix,
    plot_precision_recall,
    plot_reliability,
    plot_roc,
)
from pneumonia_cam.evaluation.report import format_metrics_table
from pneumonia_cam.evaluation.thresholds import choose_threshold


@dataclass
class SplitPredictions:
    """A split's records (path, label, patient_id) with the model's log-probabilities, row for row."""

    records: pd.DataFrame
    log_probs: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """True class indices."""
        return self.records["label"].to_numpy(dtype=np.int64)

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """Class probabilities after temperature scaling (T = 1: the model's own)."""
        return apply_temperature(self.log_probs, temperature)


def label_map(data_class_names: Sequence[str], model_class_names: Sequence[str]) -> np.ndarray:
    """Index i of the data's classes -> the index of the same class name in the model's (the truth).

    A data config that lists the classes in another order is mapped by name; one with a class the model does
    not know is refused, since its labels would be silently wrong.
    """
    unknown = [name for name in data_class_names if name not in model_class_names]
    if unknown:
        raise ValueError(
            f"data.class_names {list(data_class_names)} cannot be mapped to the checkpoint's classes "
            f"{list(model_class_names)}: {unknown} unknown. Name the classes as the model does"
        )
    return np.array([list(model_class_names).index(name) for name in data_class_names], dtype=np.int64)


def collect_predictions(
    outputs: list[dict[str, torch.Tensor]], records: pd.DataFrame, labels: np.ndarray | None = None
) -> SplitPredictions:
    """Pair `trainer.predict` outputs of an unshuffled loader with the `records` it served, in order.

    `labels` (from `label_map`) renumbers the data's labels into the model's class order.
    """
    log_probs = torch.cat([batch["log_probs"] for batch in outputs]).double().numpy()
    records = records.loc[:, ["path", "label", "patient_id"]].reset_index(drop=True)
    if labels is not None:
        records["label"] = labels[records["label"].to_numpy(dtype=np.int64)]
    if len(records) != len(log_probs):
        raise RuntimeError(
            f"{len(log_probs)} predictions for {len(records)} images: was the loader shuffled?"
        )
    return SplitPredictions(records, log_probs)


def average_predictions(members: list[SplitPredictions]) -> SplitPredictions:
    """An ensemble's predictions: the mean of its members' probabilities on the same images, row for row."""
    first = members[0]
    if len(members) == 1:
        return first
    for member in members[1:]:
        if not member.records["path"].equals(first.records["path"]):
            raise RuntimeError("ensemble members predicted different images: they must share one data module")
    mean = np.mean([np.exp(member.log_probs) for member in members], axis=0)
    return SplitPredictions(first.records, np.log(mean))


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def choose_operating_point(
    cfg: DictConfig, val: SplitPredictions | None, ckpt_path: str, tta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Threshold and temperature from config, from the validation split, or from an earlier eval."""
    method = cfg.method
    if method == "stored":
        stored = stored_operating_point(ckpt_path, tta)
        if stored is None:
            raise FileNotFoundError(
                f"No {sidecar_path(ckpt_path, tta).name} next to {ckpt_path}: run eval.py "
                "with operating_point.method=youden|sensitivity (and the same tta) first, "
                "or pass operating_point.method=fixed operating_point.threshold=<value>"
            )
        return {**stored, "method": f"stored ({stored['method']})"}
    needs_val = method in {"youden", "sensitivity"} or cfg.temperature is True
    if needs_val and (val is None or len(val.records) == 0):
        raise ValueError(
            f"operating_point.method={method} / temperature=true need a non-empty validation split"
        )
    temperature = 1.0
    if cfg.temperature is True:
        temperature = fit_temperature(val.log_probs, val.labels)
    elif cfg.temperature not in (False, None):
        temperature = float(cfg.temperature)
    if method == "fixed":
        threshold = float(cfg.threshold)
    else:
        threshold = choose_threshold(val.labels, val.probs(temperature)[:, 1], method, cfg.target_sensitivity)
    return {
        "method": method,
        "threshold": threshold,
        "target_sensitivity": cfg.target_sensitivity if method == "sensitivity" else None,
        "temperature": temperature,
        "chosen_on": "validation split" if needs_val else "config",
    }


def calibration_summary(split: SplitPredictions, temperature: float) -> dict[str, float]:
    """ECE and NLL before and after temperature scaling."""
    before, after = split.probs(1.0), split.probs(temperature)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(split.labels, before[:, 1]),
        "ece_after": expected_calibration_error(split.labels, after[:, 1]),
        "nll_before": nll(split.labels, before),
        "nll_after": nll(split.labels, after),
    }


def evaluate_split(split: SplitPredictions, point: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """Point metrics with bootstrap CIs (by patient when ids are known) at the chosen operating point."""
    prob = split.probs(point["temperature"])[:, 1]
    patients = split.records["patient_id"].astype(str)
    groups = patients.to_numpy() if cfg.by_patient and patients.nunique() < len(patients) else None
    intervals = bootstrap_ci(
        split.labels, prob, point["threshold"], groups, cfg.n_resamples, cfg.confidence, cfg.seed
    )
    return {"metrics": intervals, "resampled_by": "patient" if groups is not None else "image"}


def predictions_table(split: SplitPredictions, point: dict[str, Any], class_names: list[str]) -> pd.DataFrame:
    """path, patient_id, label, probability (of the positive class), prediction, threshold (+ class names)."""
    probs = split.probs(point["temperature"])
    table = split.records.copy()
    table["probability"] = probs[:, 1].round(6)
    table["prediction"] = OperatingPoint.from_dict(point, source="eval").decide(probs)
    table["threshold"] = point["threshold"]
    table["label_name"] = [class_names[i] for i in table["label"]]
    table["prediction_name"] = [class_names[i] for i in table["prediction"]]
    return table


def write_plots(table: pd.DataFrame, threshold: float, class_names: list[str], out_dir: Path) -> list[Path]:
    """Confusion matrix, ROC, precision-recall and reliability diagram as PNGs."""
    y, prob, pred = table["label"].to_numpy(), table["probability"].to_numpy(), table["prediction"].to_numpy()
    return [
        plot_confusion_matrix(y, pred, class_names, out_dir / "confusion_matrix.png"),
        plot_roc(y, prob, threshold, out_dir / "roc.png"),
        plot_precision_recall(y, prob, threshold, out_dir / "precision_recall.png"),
        plot_reliability(y, prob, out_dir / "reliability.png"),
    ]


def cell(score: dict[str, float]) -> str:
    """A value with its CI, for a report table."""
    return f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"


def _shortcut_lines(result: dict[str, Any] | None) -> list[str]:
    """The report's shortcut section: CAM mass in the border band, overall and per class, vs uniform."""
    if result is None:
        return []
    parts = {"all": result, **result["per_class"]}
    return [
        "## Shortcut check: CAM mass in the image border",
        "",
        f"Outer {result['border']:.0%} of every side ({result['method']} of the decided class); "
        f"a uniform map puts {result['uniform_share']:.3f} of its mass there (ratio 1).",
        "",
        "| images | n | border share | ratio to uniform |",
        "|---|---|---|---|",
        *(
            f"| {name} | {part['images']} | {cell(part['border_share'])} | {part['ratio_to_uniform']:.2f} |"
            for name, part in parts.items()
        ),
        "",
    ]


def _localisation_lines(result: dict[str, Any] | None) -> list[str]:
    """The report's localisation section: CAM vs the box prior, with CIs, and the overlay figure."""
    if result is None:
        return []

    return [
        "## CAM localisation",
        "",
        f"{result['images']} positive test images with boxes; {result['method']} region = CAM >= "
        f"{result['cam_threshold']:g} x max.",
        "",
        "| heat map | pointing game | IoU |",
        "|---|---|---|",
        f"| model CAM | {cell(result['cam']['pointing_game'])} | {cell(result['cam']['iou'])} |",
        f"| prior (mean training box) | {cell(result['baseline']['pointing_game'])} | "
        f"{cell(result['baseline']['iou'])} |",
        "",
        f"![localisation]({Path(result['figure']).name})",
        "",
    ]


def write_report(summary: dict[str, Any], plots: list[Path], out_dir: Path) -> Path:
    """One Markdown page: provenance, operating point, metrics table with CIs, calibration, plots."""
    point, calibration = summary["operating_point"], summary["calibration"]
    lines = [
        "# Evaluation report",
        "",
        f"- checkpoint: `{summary['ckpt_path']}`",
        *(
            f"- ensemble member (probabilities averaged): `{member}`"
            for member in summary.get("ensemble", [])
        ),
        f"- images: {summary['n']} ({', '.join(f'{k}: {v}' for k, v in summary['n_per_class'].items())})",
        f"- operating point: threshold {point['threshold']:.4f} ({point['method']}, {point['chosen_on']})",
        f"- confidence intervals: {summary['confidence']:.0%} bootstrap, {summary['n_resamples']} resamples "
        f"by {summary['resampled_by']}",
        "",
        format_metrics_table(summary["metrics"], summary["confidence"]),
        "",
        "## Calibration",
        "",
        f"Temperature {calibration['temperature']:.3f}: "
        f"ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}, "
        f"NLL {calibration['nll_before']:.4f} -> {calibration['nll_after']:.4f}",
        "",
        *_localisation_lines(summary.get("localisation")),
        *_shortcut_lines(summary.get("shortcut")),
        "## Plots",
        "",
        *(f"![{path.stem}]({path.name})" for path in plots),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
