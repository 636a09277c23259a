"""Evaluate a checkpoint on the test split: `python src/eval.py ckpt_path=...` -> metrics, plots, report."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lightning import LightningDataModule, Trainer  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from pneumonia_cam.data.image_io import read_header  # noqa: E402
from pneumonia_cam.evaluation import pipeline  # noqa: E402
from pneumonia_cam.evaluation.operating_point import json_ready, save_operating_point  # noqa: E402
from pneumonia_cam.evaluation.publish import publish  # noqa: E402
from pneumonia_cam.inference.ensemble import check_members  # noqa: E402
from pneumonia_cam.inference.localisation import cam_localisation  # noqa: E402
from pneumonia_cam.inference.model import InferenceModel, tta_options  # noqa: E402
from pneumonia_cam.inference.prediction_module import PredictionModule  # noqa: E402
from pneumonia_cam.inference.shortcut import cam_border_mass  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, instantiate_loggers, log_hyperparameters, task_wrapper  # noqa: E402
from pneumonia_cam.utils.logging_utils import link_checkpoints  # noqa: E402
from pneumonia_cam.utils.run_config import load_run_config, training_split_sha256  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


def resolve_data_config(cfg: DictConfig, train_cfg: DictConfig) -> DictConfig:
    """The data config given on the command line (else the checkpoint's), with the checkpoint's transforms.

    Images of any other data set must be pre-processed exactly as in training, so `image_size` and
    `transforms` always come from the checkpoint; `feature_cache` decides whether cached backbone
    features (bf16 by default) may stand in for the images.
    """
    data_cfg = cfg.data if cfg.get("data") else train_cfg.data
    with open_dict(data_cfg):
        data_cfg.output_dir = cfg.paths.output_dir
        data_cfg.image_size = train_cfg.data.image_size
        data_cfg.transforms = train_cfg.data.transforms
        if "feature_cache" in data_cfg:
            data_cfg.feature_cache.enabled = bool(cfg.feature_cache)
    return data_cfg


def load_model(ckpt_path: str, cfg: DictConfig) -> InferenceModel:
    """A checkpoint's inference model (fp32, the configured TTA); eval chooses its own operating point."""
    log.info(f"Loading {ckpt_path}")
    return InferenceModel.from_checkpoint(ckpt_path, operating_point="default").with_tta(**tta_options(cfg))


def predict_splits(
    trainer: Trainer, model: InferenceModel, datamodule: LightningDataModule
) -> tuple[pipeline.SplitPredictions, pipeline.SplitPredictions | None]:
    """One pass over each split: the test split through the data module (set-up included), then val.

    Labels are renumbered into the model's class order by name (the checkpoint's class names are the truth).
    """
    module = PredictionModule(model)
    test_outputs = trainer.predict(model=module, datamodule=datamodule)
    labels = pipeline.label_map(datamodule.class_names, model.class_names)
    test = pipeline.collect_predictions(test_outputs, datamodule.data_test.records, labels)
    if not len(datamodule.data_val):
        return test, None
    val_outputs = trainer.predict(model=module, dataloaders=datamodule.val_dataloader())
    return test, pipeline.collect_predictions(val_outputs, datamodule.data_val.records, labels)


def save_sidecar(cfg: DictConfig, point: dict[str, Any], split_hash: str, members: list[str]) -> None:
    """Save an operating point chosen on the checkpoint's OWN validation split; else say why not."""
    chosen_now = (
        cfg.operating_point.method in {"youden", "sensitivity"} or cfg.operating_point.temperature is True
    )
    if not (cfg.operating_point.save and chosen_now):
        return
    trained_on = training_split_sha256(cfg.ckpt_path)
    if members:  # an ensemble's point is no one checkpoint's
        log.info("Operating point not saved: it belongs to the ensemble, not to one checkpoint")
    elif trained_on is None or split_hash != trained_on:
        log.info(
            f"Operating point not saved: it was chosen on split {split_hash}, not on the split the "
            f"checkpoint was trained on ({trained_on}); only the model's own validation split may set it"
        )
    else:
        sidecar = save_operating_point(point, cfg.ckpt_path, split_hash, tta_options(cfg))
        log.info(f"Operating point saved to {sidecar} (predict.py, the server and later evals reuse it)")


def in_model_order(
    records: pd.DataFrame, datamodule: LightningDataModule, model: InferenceModel
) -> pd.DataFrame:
    """A split's records with labels renumbered into the checkpoint's class order (by name)."""
    labels = pipeline.label_map(datamodule.class_names, model.class_names)
    return records.assign(label=labels[records["label"].to_numpy(dtype=np.int64)])


def with_bootstrap(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    """An eval block's settings plus the bootstrap's resamples, confidence and seed."""
    return {**node, **{key: cfg.bootstrap[key] for key in ("n_resamples", "confidence", "seed")}}


def localise(
    cfg: DictConfig, model: InferenceModel, datamodule: LightningDataModule, out_dir: Path
) -> dict[str, Any] | None:
    """CAM localisation when the test split carries boxes (RSNA) and localisation.enabled; else None."""
    if not cfg.localisation.enabled or "boxes" not in datamodule.data_test.records:
        return None
    splits = (datamodule.data_test, datamodule.data_train)
    test, train = (in_model_order(split.records, datamodule, model) for split in splits)
    settings = with_bootstrap(cfg, cfg.localisation)
    result = cam_localisation(model, test, train, image_sizes(datamodule, train["path"]), settings, out_dir)
    if result is not None:
        cam, prior = result["cam"], result["baseline"]
        log.info(
            f"CAM localisation on {result['images']} boxed positives: pointing game "
            f"{cam['pointing_game']['value']:.3f} (prior {prior['pointing_game']['value']:.3f}), IoU "
            f"{cam['iou']['value']:.3f} (prior {prior['iou']['value']:.3f})"
        )
    return result


def shortcut_check(cfg: DictConfig, model: InferenceModel, datamodule: LightningDataModule) -> dict | None:
    """CAM mass in the image border vs the centre over the test split, when shortcut.enabled."""
    if not cfg.shortcut.enabled:
        return None
    test = in_model_order(datamodule.data_test.records, datamodule, model)
    result = cam_border_mass(model, test, with_bootstrap(cfg, cfg.shortcut))
    log.info(
        f"CAM mass in the outer {result['border']:.0%} band: {result['border_share']['value']:.3f} "
        f"({result['ratio_to_uniform']:.2f}x a uniform map's {result['uniform_share']:.3f})"
    )
    return result


def image_sizes(datamodule: LightningDataModule, paths: pd.Series) -> dict[str, tuple[int, int]]:
    """(height, width) of each image: from the data module's scan when it ran, else from the file header."""
    facts = datamodule.image_facts
    if facts is not None:
        known = facts.set_index("path")
        return {path: (int(known.at[path, "height"]), int(known.at[path, "width"])) for path in paths}
    headers = {path: read_header(Path(path).read_bytes(), path) for path in paths}
    return {path: (header.height, header.width) for path, header in headers.items()}


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predict test and val once each, choose the operating point on val, report test metrics with CIs.

    With `ensemble`, every member predicts both splits and their probabilities are averaged first.
    """
    train_cfg = load_run_config(cfg.ckpt_path)
    members = [str(path) for path in cfg.get("ensemble") or []]
    check_members(cfg.ckpt_path, members)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    data_cfg = resolve_data_config(cfg, train_cfg)
    log.info(f"Instantiating datamodule <{data_cfg._target_}>")
    datamodule: LightningDataModule = hydra.utils.instantiate(data_cfg)
    model = load_model(cfg.ckpt_path, cfg)
    logger: list[Logger] = instantiate_loggers(cfg.get("logger"))
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, logger=logger)
    object_dict = {"cfg": cfg, "datamodule": datamodule, "model": model, "logger": logger, "trainer": trainer}
    if logger:
        log_hyperparameters(object_dict)
        link_checkpoints(logger, [cfg.ckpt_path, *members])

    log.info(f"Predicting the test and validation splits with {1 + len(members)} model(s)")
    parts = [predict_splits(trainer, model, datamodule)]
    parts += [predict_splits(trainer, load_model(ckpt, cfg), datamodule) for ckpt in members]
    test_predictions = pipeline.average_predictions([test for test, _ in parts])
    val_predictions = None if parts[0][1] is None else pipeline.average_predictions([val for _, val in parts])
    point = pipeline.choose_operating_point(
        cfg.operating_point, val_predictions, cfg.ckpt_path, tta_options(cfg)
    )
    log.info(f"Operating point: threshold {point['threshold']:.4f} ({point['method']})")

    out_dir = Path(cfg.paths.output_dir)
    class_names = list(model.class_names)
    table = pipeline.predictions_table(test_predictions, point, class_names)
    table.to_csv(out_dir / "predictions.csv", index=False)
    summary = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "ensemble": [str(Path(ckpt).resolve()) for ckpt in members],
        "split": "test",
        "n": len(table),
        "n_per_class": {name: int((table["label"] == i).sum()) for i, name in enumerate(class_names)},
        "operating_point": point,
        "calibration": pipeline.calibration_summary(test_predictions, point["temperature"]),
        **pipeline.evaluate_split(test_predictions, point, cfg.bootstrap),
        "confidence": cfg.bootstrap.confidence,
        "n_resamples": cfg.bootstrap.n_resamples,
    }
    localisation = localise(cfg, model, datamodule, out_dir)
    if localisation is not None:
        summary["localisation"] = localisation
    shortcut = shortcut_check(cfg, model, datamodule)
    if shortcut is not None:
        summary["shortcut"] = shortcut
    plots = pipeline.write_plots(table, point["threshold"], class_names, out_dir)
    report = pipeline.write_report(summary, plots, out_dir)
    metrics_path = out_dir / cfg.metrics_file
    metrics_path.write_text(json.dumps(json_ready(summary), indent=2, sort_keys=True))
    save_sidecar(cfg, point, datamodule.split_hash, members)
    publish(summary, plots, table, trainer.loggers, class_names, cfg.wandb_table_rows)
    log.info(f"Metrics: {metrics_path}; report: {report}")
    return summary, object_dict


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point: apply extras and evaluate."""
    extras(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
