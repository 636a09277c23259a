"""The Python API and the predict / visualize commands, on a trained smoke checkpoint."""

import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FULL_RESOLUTION, KERMANY, assert_ok, run_entry_point

from pneumonia_cam.data.preprocessor import ImagePreprocessor
from pneumonia_cam.evaluation.operating_point import OperatingPoint
from pneumonia_cam.inference.batch import predict_paths
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.utils.run_config import load_run_config

QUIET = ["extras.print_config=false"]


@pytest.fixture(scope="module")
def model(smoke_checkpoint: Path) -> InferenceModel:
    """The smoke model, loaded as a user would."""
    return InferenceModel.load_pretrained(smoke_checkpoint)


@pytest.fixture(scope="module")
def test_split(smoke_run: Path) -> pd.DataFrame:
    """The smoke run's test rows, with absolute paths."""
    split = pd.read_csv(smoke_run / "split.csv")
    root = Path(load_run_config(next((smoke_run / "checkpoints").glob("*.ckpt"))).data.data_dir)
    split["path"] = [str(next(root.glob(f"synthetic_*/{p}"))) for p in split["path"]]
    return split[split["split"] == "test"]


def test_preprocessor_is_the_data_modules_eval_transform(smoke_checkpoint, smoke_run, test_split):
    """process(path) gives exactly the tensor the test loader fed the model during training."""
    cfg = load_run_config(smoke_checkpoint)
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=None)
    datamodule.setup("test")
    preprocessor = ImagePreprocessor.from_data_config(cfg.data)
    for index in range(3):
        path = datamodule.data_test.records["path"].iloc[index]
        torch.testing.assert_close(preprocessor.process(path), datamodule.data_test[index][0], rtol=0, atol=0)


def test_predict_matches_model_probabilities(model, test_split):
    """predict() returns the class name and P(class) that the network computes for that image."""
    correct = 0
    for _, row in test_split.head(8).iterrows():
        label, confidence = model.predict(row["path"])
        probs = model.net(model.preprocessor.process(row["path"])[None]).exp()[0]
        expected = int(probs[1] >= 0.5)
        assert label == model.class_names[expected]
        assert confidence == pytest.approx(float(probs[expected]), abs=1e-6)
        assert 0.5 <= confidence <= 1.0
        correct += expected == row["label"]
    assert correct >= 7  # the smoke model has learnt the blob


def test_generate_cam_at_original_resolution(model, test_split, tmp_path):
    """A map in [0, 1] the size of the original image, whatever the model's input size."""
    path = test_split["path"].iloc[0]
    cam = model.generate_cam(path)
    assert cam.shape == cv2.imread(path, cv2.IMREAD_GRAYSCALE).shape
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    big = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (300, 200))
    assert model.generate_cam(big, target_class=0).shape == (200, 300)
    assert model.generate_cam(big, method="gradcam").shape == (200, 300)


@pytest.mark.slow
def test_predict_cli_lists_every_input_and_writes_overlays(smoke_checkpoint, test_split, model, tmp_path):
    """A folder with a broken file: every file gets a row, the broken one its error; one overlay per image."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in test_split["path"].head(5):
        shutil.copy(path, inputs)
    (inputs / "broken.png").write_bytes(b"not an image")
    result = run_entry_point(
        "predict.py",
        [
            f"ckpt_path={smoke_checkpoint}",
            f"input={inputs}",
            f"output={tmp_path / 'predictions.csv'}",
            f"cam_dir={tmp_path / 'cams'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *QUIET,
        ],
    )
    assert_ok(result)
    table = pd.read_csv(tmp_path / "predictions.csv", keep_default_na=False)
    assert list(table.columns) == ["path", "prediction", "probability", "threshold", "error"]
    assert len(table) == 6
    broken = table[table["path"].str.endswith("broken.png")].iloc[0]
    assert "cannot be decoded" in broken["error"] and broken["prediction"] == ""
    for _, row in table[table["error"] == ""].iterrows():
        probs = model.net(model.preprocessor.process(row["path"])[None]).exp()[0]
        assert float(row["probability"]) == pytest.approx(float(probs[1]), abs=1e-5)
        assert row["prediction"] == model.class_names[int(probs[1] >= 0.5)]
    assert (table["threshold"] == 0.5).all()
    assert len(list((tmp_path / "cams").glob("*.png"))) == 5


@pytest.mark.slow
@pytest.mark.real_data
def test_visualize_cli_on_real_images(smoke_checkpoint, tmp_path):
    """One overlay per real image, at the original resolution (full-size PNGs too), plus a grid."""
    if not KERMANY.is_dir() or not FULL_RESOLUTION.is_dir():
        pytest.skip("../shared/data is not available")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    real = (
        sorted((KERMANY / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
        + sorted(FULL_RESOLUTION.glob("*.png"))[:2]
    )
    for path in real:
        (inputs / path.name).symlink_to(path)
    result = run_entry_point(
        "visualize.py",
        [
            f"ckpt_path={smoke_checkpoint}",
            f"input={inputs}",
            f"output_dir={tmp_path / 'overlays'}",
            "cam.method=gradcam",
            f"hydra.run.dir={tmp_path / 'run'}",
            *QUIET,
        ],
    )
    assert_ok(result)
    overlays = sorted((tmp_path / "overlays").glob("0*.png"))
    assert len(overlays) == len(real)
    for source, overlay in zip(sorted(real, key=lambda p: p.name), overlays, strict=True):
        original = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        written = cv2.imread(str(overlay))
        assert written.shape[:2] == original.shape[:2]
        assert (
            np.abs(
                written.astype(int)
                - cv2.cvtColor(cv2.imread(str(source), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR).astype(int)
            ).mean()
            > 1
        )  # the heat map is really drawn
    assert cv2.imread(str(tmp_path / "overlays" / "grid.png")) is not None


@pytest.mark.real_data
def test_predict_and_cam_on_dicom(model):
    """DICOM files from ../shared/data go through the same API (pydicom reader, original-size CAMs)."""
    dicoms = sorted((KERMANY.parent / "dicom_samples").glob("*.dcm"))
    if not dicoms:
        pytest.skip("../shared/data/dicom_samples is not available")
    for path in dicoms:
        label, confidence = model.predict(path)
        assert label in model.class_names and 0.5 <= confidence <= 1.0
        original = model.preprocessor.prepare(path).original
        assert model.generate_cam(path).shape == original.shape


def test_explain_with_probs_one_pass_matches_separate_calls(model, test_split):
    """One forward pass gives predict_proba's probabilities and maps of the *decided* class (threshold)."""
    paths = list(test_split["path"].head(4))
    prepared = [model.prepare(path) for path in paths]
    separate = model.predict_proba(torch.stack([p.tensor for p in prepared]))
    original = model.operating_point
    try:
        # nothing reaches it: every decision is class 0, whatever the arg-max says
        model.operating_point = OperatingPoint(threshold=1.1)
        probs, maps = model.explain_with_probs(prepared)
        expected = model.explain(prepared, target_class=0)
    finally:
        model.operating_point = original
    torch.testing.assert_close(probs, separate, atol=1e-5, rtol=0)
    for got, want in zip(maps, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(maps[0], model.explain(prepared[:1], target_class=1)[0])


def test_quick_start_chain_from_the_package_top_level(smoke_checkpoint, test_split):
    """The reference study's Quick Start: process -> predict -> generate_cam on the preprocessor's tensor."""
    from pneumonia_cam import ImagePreprocessor as TopLevelPreprocessor
    from pneumonia_cam import load_pretrained

    path = test_split["path"].iloc[0]
    model = load_pretrained(smoke_checkpoint)
    preprocessor = TopLevelPreprocessor.from_checkpoint(smoke_checkpoint)
    image = preprocessor.process(path)
    label, confidence = model.predict(image)
    assert (label, confidence) == model.predict(path)
    cam = model.generate_cam(image)
    assert cam.shape == tuple(image.shape[-2:]) == (64, 64)  # the original is unknown: the tensor's size
    np.testing.assert_allclose(cam, model.generate_cam(cv2.resize(cv2.imread(path, 0), (64, 64))), atol=1e-6)
    with pytest.raises(ValueError, match="C x H x W"):
        model.predict(image[None])


def test_probabilities_do_not_depend_on_asking_for_a_cam(model, test_split):
    """bf16 predictor: predict_paths gives identical probabilities with and without CAMs (cam and gradcam)."""
    paths = [Path(p) for p in test_split["path"].head(6)]
    model.configure(precision="bf16")
    try:
        plain = [p.probability for p in predict_paths(model, paths, batch_size=4)]
        for method in ("cam", "gradcam"):
            with_cam = list(predict_paths(model, paths, batch_size=4, cam_method=method))
            assert [p.probability for p in with_cam] == plain, method
            assert all(p.cam.shape == p.original.shape for p in with_cam)
    finally:
        model.configure()
    fp32 = [p.probability for p in predict_paths(model, paths, batch_size=4)]
    assert max(abs(a - b) for a, b in zip(plain, fp32, strict=True)) < 0.05


def test_only_unreadable_inputs_become_rows(model, test_split, tmp_path, monkeypatch):
    """A broken file is a row with its error; a programming error propagates instead of becoming rows."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rows = list(predict_paths(model, [Path(test_split["path"].iloc[0]), broken, tmp_path / "missing.png"]))
    assert (
        rows[0].error is None and "cannot be decoded" in rows[1].error and "does not exist" in rows[2].error
    )

    def bug(**_):
        raise KeyError("a bug, not bad input")

    monkeypatch.setattr(model.preprocessor, "transform", bug)
    with pytest.raises(KeyError, match="a bug"):
        list(predict_paths(model, [Path(test_split["path"].iloc[0])]))


def test_legacy_checkpoint_targets_still_load(smoke_checkpoint, tmp_path):
    """Checkpoints written when the library was `src.<package>` load with the `pneumonia_cam` targets."""
    checkpoint = torch.load(smoke_checkpoint, map_location="cpu", weights_only=True)
    text = str(checkpoint["run_config"])
    assert "pneumonia_cam.models.classifier.PneumoniaClassifier" in text
    legacy = eval(text.replace("pneumonia_cam.", "src."))
    checkpoint["run_config"] = legacy
    old = tmp_path / "legacy.ckpt"
    torch.save(checkpoint, old)
    assert load_run_config(old).model._target_ == "pneumonia_cam.models.classifier.PneumoniaClassifier"
    assert InferenceModel.from_checkpoint(old).class_names == ("NORMAL", "PNEUMONIA")
