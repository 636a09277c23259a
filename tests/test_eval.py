"""eval.py rebuilds the pipeline from the checkpoint, reproduces training's test metrics, reports CIs."""

import json
import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import KERMANY, assert_ok, compose_config, perturbed_copy, run_entry_point
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from pneumonia_cam.evaluation.pipeline import SplitPredictions, choose_operating_point
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.utils.run_config import load_run_config, training_split_sha256
from src.eval import evaluate
from src.train import train

QUIET = ["extras.print_config=false", "trainer.enable_progress_bar=false"]


def run_eval(cfg_eval, ckpt: str, **operating_point):
    """Evaluate `ckpt` with the given operating-point options."""
    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = ckpt
        cfg_eval.bootstrap.n_resamples = 200
        cfg_eval.operating_point.update(operating_point)
    HydraConfig().set_config(cfg_eval)
    return evaluate(cfg_eval)


def test_train_eval_round_trip(cfg_train, cfg_eval):
    """Eval of the best checkpoint reproduces training's test metrics and writes every artefact."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 2
    HydraConfig().set_config(cfg_train)
    train_metrics, objects = train(cfg_train)
    best = objects["trainer"].checkpoint_callback.best_model_path
    assert (Path(cfg_train.paths.output_dir) / "training_curves.png").stat().st_size > 1000

    summary, _ = run_eval(cfg_eval, best)
    out = Path(cfg_eval.paths.output_dir)
    # eval's own metrics reproduce every test metric that training logged (same checkpoint, threshold 0.5)
    metrics = summary["metrics"]
    names = {"acc": "accuracy", "recall": "sensitivity", "specificity": "specificity", "auroc": "auroc"}
    names |= {"precision": "precision", "f1": "f1"}
    for key in [k for k in train_metrics if k.startswith("test/")]:
        logged = train_metrics[key].item()
        if key == "test/loss":  # NLL of the true class (the smoke run uses no class weights)
            assert summary["calibration"]["nll_before"] == pytest.approx(logged, abs=1e-5), key
            continue
        value = metrics[names[key.removeprefix("test/")]]["value"]
        # undefined here (NaN, e.g. precision with no positive call) is what torchmetrics reports as 0
        assert value == pytest.approx(logged, abs=1e-5) if np.isfinite(value) else logged == 0, key
    defined = [name for name, m in metrics.items() if "low" in m and np.isfinite(m["value"])]
    assert {"accuracy", "auroc", "brier", "ece"} <= set(defined)
    for name in defined:  # MCC/kappa/precision are undefined (NaN) when a 2-epoch model predicts one class
        assert metrics[name]["low"] <= metrics[name]["value"] <= metrics[name]["high"], name

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ckpt_path"] == str(Path(best).resolve())
    assert saved["operating_point"]["threshold"] == 0.5
    assert saved["n_per_class"] == {"NORMAL": 12, "PNEUMONIA": 12}
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns[:6]) == [
        "path",
        "label",
        "patient_id",
        "probability",
        "prediction",
        "threshold",
    ]
    assert len(predictions) == saved["n"] == 24
    assert ((predictions["probability"] >= 0.5).astype(int) == predictions["prediction"]).all()
    for plot in ("confusion_matrix", "roc", "precision_recall", "reliability"):
        image = cv2.imread(str(out / f"{plot}.png"))
        assert image is not None and image.std() > 0, plot
        assert f"({plot}.png)" in (out / "report.md").read_text()
    # the eval split is written to the eval run directory, not over the training run's
    assert (out / "split.csv").is_file()


def test_operating_point_is_chosen_on_validation_only():
    """Youden / target-sensitivity thresholds depend on the validation predictions, never on test's."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    prob = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 400), 1e-4, 1 - 1e-4)
    log_probs = np.log(np.stack([1 - prob, prob], axis=1))
    val = SplitPredictions(pd.DataFrame({"label": labels}), log_probs)
    cfg = {"method": "sensitivity", "threshold": 0.5, "target_sensitivity": 0.95, "temperature": False}
    point = choose_operating_point(OmegaConf.create(cfg), val, "unused.ckpt")
    val_prob = val.probs()[:, 1]
    assert (val_prob[labels == 1] >= point["threshold"]).mean() >= 0.95
    assert point["chosen_on"] == "validation split"
    shifted = SplitPredictions(val.records, np.log(np.stack([1 - prob**2, prob**2], axis=1)))
    assert choose_operating_point(OmegaConf.create(cfg), shifted, "x")["threshold"] != point["threshold"]
    with pytest.raises(ValueError, match="validation split"):
        choose_operating_point(OmegaConf.create(cfg), None, "x")


def test_chosen_threshold_and_temperature_are_reused(smoke_checkpoint, cfg_eval, tmp_path):
    """eval with youden + temperature saves both beside the checkpoint; predict and later evals reuse them."""
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(smoke_checkpoint, ckpt)
    summary, _ = run_eval(cfg_eval, str(ckpt), method="youden", temperature=True)
    point = summary["operating_point"]
    sidecar = json.loads(ckpt.with_suffix(".operating_point.json").read_text())
    assert sidecar["threshold"] == pytest.approx(point["threshold"])
    assert sidecar["temperature"] == pytest.approx(point["temperature"])
    assert summary["calibration"]["nll_after"] <= summary["calibration"]["nll_before"] + 1e-9

    model = InferenceModel.from_checkpoint(ckpt)
    assert model.operating_point.threshold == pytest.approx(point["threshold"])
    assert model.operating_point.temperature == pytest.approx(point["temperature"])

    with open_dict(cfg_eval):
        cfg_eval.paths.output_dir = str(tmp_path / "again")
    Path(cfg_eval.paths.output_dir).mkdir()
    again, _ = run_eval(cfg_eval, str(ckpt), method="stored", temperature=False)
    assert again["operating_point"]["threshold"] == pytest.approx(point["threshold"])


@pytest.mark.slow
@pytest.mark.real_data
def test_eval_on_external_manifest_of_real_images(smoke_checkpoint, tmp_path):
    """External validation: a CSV manifest of real images, all of it as test, with a given threshold."""
    if not KERMANY.is_dir():
        pytest.skip("../shared/data is not available")
    rows = [
        (str(path), label)
        for label in ("NORMAL", "PNEUMONIA")
        for path in sorted((KERMANY / "test" / label).glob("*.jpeg"))[:20]
    ]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "manifest.csv", index=False)
    result = run_entry_point(
        "eval.py",
        [
            f"ckpt_path={smoke_checkpoint}",
            "data=manifest",
            f"data.data_dir={tmp_path}",
            "data.fractions=[0,0,1]",
            "operating_point.threshold=0.7",
            "bootstrap.n_resamples=100",
            f"hydra.run.dir={tmp_path / 'run'}",
            *QUIET,
        ],
    )
    assert_ok(result)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["n"] == 40 and saved["n_per_class"] == {"NORMAL": 20, "PNEUMONIA": 20}
    assert saved["operating_point"]["threshold"] == 0.7
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert set(predictions["path"]) == {path for path, _ in rows}
    # the checkpoint's own pre-processing (64 px for the smoke model) was used, not the manifest default's
    assert load_run_config(smoke_checkpoint).data.image_size == 64
    assert saved["resampled_by"] == "patient"
    assert torch.isfinite(torch.tensor(saved["metrics"]["accuracy"]["value"]))


def test_eval_on_cached_features_matches_eval_on_images(cfg_train, cfg_eval, tmp_path):
    """A frozen run trained on fp32 cached features: eval with feature_cache=true gives the image results."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 2
        cfg_train.model.unfreeze = []
        cfg_train.data.feature_cache.enabled = True
        cfg_train.data.feature_cache.precision = "fp32"
        cfg_train.data.feature_cache.dir = str(tmp_path / "features")
        cfg_train.callbacks.cam_panel = None
    HydraConfig().set_config(cfg_train)
    _, objects = train(cfg_train)
    best = objects["trainer"].checkpoint_callback.best_model_path

    on_images, _ = run_eval(cfg_eval, best)
    with open_dict(cfg_eval):
        cfg_eval.feature_cache = True
        cfg_eval.paths.output_dir = str(tmp_path / "cached")
    Path(cfg_eval.paths.output_dir).mkdir()
    on_features, objects = run_eval(cfg_eval, best)
    assert set(objects["datamodule"]._features) >= {"val", "test"}  # really served from the cache
    for name in ("accuracy", "auroc", "brier"):
        assert on_features["metrics"][name]["value"] == pytest.approx(
            on_images["metrics"][name]["value"], abs=1e-4
        )
    images = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    cached = pd.read_csv(tmp_path / "cached" / "predictions.csv")
    assert (images["path"] == cached["path"]).all()
    np.testing.assert_allclose(images["probability"], cached["probability"], atol=1e-4)


def eval_probabilities(cfg_eval, tmp_path: Path, name: str, ckpt: Path, ensemble=(), **point) -> pd.DataFrame:
    """Evaluate into its own folder and return its predictions table."""
    with open_dict(cfg_eval):
        cfg_eval.paths.output_dir = str(tmp_path / name)
        cfg_eval.ensemble = [str(member) for member in ensemble]
    Path(cfg_eval.paths.output_dir).mkdir()
    run_eval(cfg_eval, str(ckpt), **point)
    return pd.read_csv(tmp_path / name / "predictions.csv")


def test_ensemble_averages_member_probabilities(smoke_checkpoint, cfg_eval, tmp_path):
    """ensemble=[B]: each test probability is the mean of A's and B's; its val threshold is not saved to A."""
    first = tmp_path / "a.ckpt"
    shutil.copy(smoke_checkpoint, first)
    second = perturbed_copy(smoke_checkpoint, tmp_path / "b.ckpt")
    alone_a = eval_probabilities(cfg_eval, tmp_path, "a", first, method="fixed", threshold=0.5)
    alone_b = eval_probabilities(cfg_eval, tmp_path, "b", second, method="fixed", threshold=0.5)
    both = eval_probabilities(cfg_eval, tmp_path, "ab", first, [second], method="youden")
    assert not np.allclose(alone_a["probability"], alone_b["probability"], atol=1e-3)
    expected = (alone_a["probability"] + alone_b["probability"]) / 2
    np.testing.assert_allclose(both["probability"], expected, atol=2e-6)
    summary = json.loads((tmp_path / "ab" / "metrics.json").read_text())
    assert summary["ensemble"] == [str(second.resolve())]
    assert not first.with_suffix(".operating_point.json").exists()


def test_ensemble_refuses_members_of_another_split(smoke_checkpoint, cfg_eval, tmp_path):
    other = perturbed_copy(smoke_checkpoint, tmp_path / "other_split.ckpt", data_seed=999)
    with open_dict(cfg_eval):
        cfg_eval.ensemble = [str(other)]
    with pytest.raises(ValueError, match=r"other_split\.ckpt.*seed"):
        run_eval(cfg_eval, str(smoke_checkpoint))


def manifest_of_test_split(ckpt: Path, out: Path) -> Path:
    """A CSV manifest (class NAMES as labels) of the smoke run's test images."""
    datamodule = hydra.utils.instantiate(load_run_config(ckpt).data, output_dir=None)
    datamodule.setup("test")
    records = datamodule.data_test.records
    names = [datamodule.class_names[label] for label in records["label"]]
    pd.DataFrame({"path": records["path"], "label": names}).to_csv(out / "manifest.csv", index=False)
    return out


def manifest_eval(cfg_eval, ckpt: Path, folder: Path, name: str, class_names: list[str]) -> dict:
    """Evaluate `ckpt` on the manifest in `folder` with the given data.class_names order."""
    data = compose_config("eval.yaml", ["ckpt_path=.", "data=manifest"]).data
    with open_dict(cfg_eval):
        cfg_eval.data = data
        cfg_eval.data.data_dir = str(folder)
        cfg_eval.data.fractions = [0, 0, 1]
        cfg_eval.data.class_names = class_names
        cfg_eval.paths.output_dir = str(folder / name)
    Path(cfg_eval.paths.output_dir).mkdir()
    return run_eval(cfg_eval, str(ckpt), method="fixed")[0]


def test_eval_maps_labels_to_the_checkpoints_class_names(smoke_checkpoint, cfg_eval, tmp_path):
    """Another class order changes nothing (labels are mapped by name); an unknown class is refused."""
    folder = manifest_of_test_split(smoke_checkpoint, tmp_path)
    same = manifest_eval(cfg_eval, smoke_checkpoint, folder, "same", ["NORMAL", "PNEUMONIA"])
    swapped = manifest_eval(cfg_eval, smoke_checkpoint, folder, "swapped", ["PNEUMONIA", "NORMAL"])
    assert same["metrics"]["auroc"]["value"] > 0.9  # the smoke model has learnt the blob
    for metric in ("auroc", "accuracy", "sensitivity"):
        assert swapped["metrics"][metric]["value"] == same["metrics"][metric]["value"], metric
    assert swapped["n_per_class"] == same["n_per_class"] == {"NORMAL": 12, "PNEUMONIA": 12}
    with pytest.raises(ValueError, match=r"cannot be mapped to the checkpoint's classes.*\['OPACITY'\]"):
        manifest_eval(cfg_eval, smoke_checkpoint, folder, "unknown", ["NORMAL", "PNEUMONIA", "OPACITY"])


def test_eval_on_another_split_never_writes_the_sidecar(smoke_checkpoint, cfg_eval, tmp_path):
    """A threshold chosen on another split is reported, not saved next to the checkpoint; its own is saved."""
    ckpt = tmp_path / "model.ckpt"
    shutil.copy(smoke_checkpoint, ckpt)
    with open_dict(cfg_eval):
        cfg_eval.data = load_run_config(ckpt).data
        cfg_eval.data.seed += 1  # same images, another split: its validation images may be training images
    other, _ = run_eval(cfg_eval, str(ckpt), method="youden")
    assert other["operating_point"]["chosen_on"] == "validation split"
    assert not ckpt.with_suffix(".operating_point.json").exists()
    with open_dict(cfg_eval):
        cfg_eval.data = None
        cfg_eval.paths.output_dir = str(tmp_path / "own")
    Path(cfg_eval.paths.output_dir).mkdir()
    own, objects = run_eval(cfg_eval, str(ckpt), method="youden")
    sidecar = json.loads(ckpt.with_suffix(".operating_point.json").read_text())
    assert sidecar["split_sha256"] == objects["datamodule"].split_hash == training_split_sha256(ckpt)
    assert sidecar["threshold"] == own["operating_point"]["threshold"]
