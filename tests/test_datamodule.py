"""The data module splits by patient, checks images, balances train and serves consistent tensors."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import IMAGENET_MEAN, IMAGENET_STD, folder_datamodule, make_class_folders, small_transforms
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from pneumonia_cam.data.datamodule import ChestXrayDataModule
from pneumonia_cam.data.sampling import EpochSampler
from pneumonia_cam.data.sources import MedMNISTSource

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FRACTIONS = (0.6, 0.2, 0.2)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_class_folders(tmp_path / "xray", counts=(24, 56))
    return tmp_path / "xray"


def _ready(dm: ChestXrayDataModule) -> ChestXrayDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_setup_splits_by_patient_and_writes_split_csv(folder: Path, tmp_path: Path) -> None:
    dm = _ready(folder_datamodule(folder, fractions=FRACTIONS, output_dir=str(tmp_path / "run")))
    records = dm.records
    assert len(records) == 80 and set(records["split"]) == {"train", "val", "test"}
    assert (records.groupby("patient_id")["split"].nunique() == 1).all()
    assert len(dm.data_train) + len(dm.data_val) + len(dm.data_test) == 80
    assert len(dm.data_test) == pytest.approx(16, abs=2)  # round(0.2 * 24) + round(0.2 * 56), whole patients
    split_csv = Path(dm.split_path)
    assert split_csv == tmp_path / "run" / "split.csv"
    assert dm.split_hash == hashlib.sha256(split_csv.read_bytes()).hexdigest()
    assert pd.read_csv(split_csv)["path"].str.startswith(("NORMAL/", "PNEUMONIA/")).all()  # portable paths
    first = dm.records
    dm.setup("test")
    assert dm.records is first  # idempotent


def test_split_hash_depends_only_on_seed(folder: Path) -> None:
    hashes = [_ready(folder_datamodule(folder, seed=s, fractions=FRACTIONS)).split_hash for s in (1, 1, 2)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_batches_have_model_ready_shapes_and_normalisation(folder: Path) -> None:
    dm = _ready(folder_datamodule(folder, batch_size=8))
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (8,) and labels.dtype == torch.int64
    gray = images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(gray[:, 0], gray[:, 2], atol=1e-5, rtol=0)  # one gray channel repeated 3 times
    constant = dm.eval_transform(image=np.full((20, 20), 128, dtype=np.uint8))["image"]
    expected = (128 / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(constant.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)


def test_eval_transform_is_deterministic_and_shared(folder: Path) -> None:
    dm = _ready(folder_datamodule(folder, fractions=FRACTIONS))
    assert dm.data_val.transform is dm.eval_transform is dm.data_test.transform
    assert dm.predict_dataloader().dataset is dm.data_test
    path = dm.data_val.records["path"][0]
    image = dm.source.read(path)
    outputs = [dm.eval_transform(image=image)["image"] for _ in range(3)]
    assert all(torch.equal(outputs[0], out) for out in outputs)
    images, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(images[0], outputs[0])


def test_reseed_makes_augmentation_reproducible(folder: Path) -> None:
    dataset = _ready(folder_datamodule(folder)).data_train

    def augmented(seed: int) -> torch.Tensor:
        dataset.reseed(seed)
        return torch.stack([dataset[i][0] for i in range(8)])

    assert torch.equal(augmented(5), augmented(5))
    assert not torch.equal(augmented(5), augmented(6))


def test_worker_processes_give_the_same_eval_batches(folder: Path) -> None:
    single = _ready(folder_datamodule(folder, fractions=FRACTIONS))
    workers = _ready(folder_datamodule(folder, fractions=FRACTIONS, num_workers=2, persistent_workers=True))
    for (a, la), (b, lb) in zip(single.val_dataloader(), workers.val_dataloader(), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert sum(len(y) for _, y in workers.train_dataloader()) == len(workers.data_train)


def test_predefined_train_test_split_is_kept_and_val_carved(tmp_path: Path) -> None:
    make_class_folders(tmp_path, counts=(20, 40), split="train")
    make_class_folders(tmp_path, counts=(6, 6), split="test")
    dm = _ready(folder_datamodule(tmp_path))
    test_paths = set(dm.data_test.records["path"])
    assert len(test_paths) == 12 and all("/test/" in p for p in test_paths)
    assert len(dm.data_val) > 0 and all("/train/" in p for p in dm.data_val.records["path"])
    trainval = dm.records[dm.records["split"] != "test"]
    assert (trainval.groupby("patient_id")["split"].nunique() == 1).all()


def _break(folder: Path) -> list[Path]:
    """Three kinds of bad files among good ones."""
    empty, garbage = folder / "NORMAL" / "empty.png", folder / "PNEUMONIA" / "garbage.png"
    empty.write_bytes(b"")
    garbage.write_bytes(b"definitely not a png")
    return [empty, garbage]


def test_bad_images_error_lists_every_path(folder: Path) -> None:
    bad = _break(folder)
    with pytest.raises(ValueError, match="2 of 82 images cannot be read") as error:
        _ready(folder_datamodule(folder))
    for path, reason in zip(bad, ("is empty (0 bytes)", "cannot be decoded"), strict=True):
        assert f"{path}: {reason}" in str(error.value)


def test_bad_images_skip_drops_and_records_them(folder: Path, tmp_path: Path, caplog) -> None:
    bad = _break(folder)
    with caplog.at_level(logging.WARNING, logger="pneumonia_cam.data.datamodule"):
        dm = _ready(folder_datamodule(folder, on_bad_image="skip", output_dir=str(tmp_path / "run")))
    assert "Skipping 2 of 82" in caplog.text
    used = {p for ds in (dm.data_train, dm.data_val, dm.data_test) for p in ds.records["path"]}
    assert len(used) == 80 and not used & {str(p) for p in bad}
    table = pd.read_csv(dm.split_path, keep_default_na=False).set_index("path")
    assert table.loc["NORMAL/empty.png", "status"] == "is empty (0 bytes)"
    assert table.loc["PNEUMONIA/garbage.png", "status"] == "cannot be decoded"
    assert (table["status"] == "ok").sum() == 80


def _train_counts(dm: ChestXrayDataModule) -> list[int]:
    return np.bincount(dm.data_train.records["label"], minlength=2).tolist()


def test_balance_undersample_equalises_train(folder: Path) -> None:
    plain = _ready(folder_datamodule(folder))
    dm = _ready(folder_datamodule(folder, balance="undersample"))
    smallest = min(_train_counts(plain))
    assert _train_counts(dm) == [smallest, smallest]
    assert len(dm.data_val) == len(plain.data_val)  # only train is touched
    again = _ready(folder_datamodule(folder, balance="undersample"))
    assert dm.data_train.records["path"].tolist() == again.data_train.records["path"].tolist()


def test_balance_loss_weights_by_hand(folder: Path) -> None:
    dm = _ready(folder_datamodule(folder, balance="loss_weights"))
    n0, n1 = _train_counts(dm)
    inverse = np.array([1 / n0, 1 / n1])
    torch.testing.assert_close(dm.class_weights, torch.tensor(inverse / inverse.mean(), dtype=torch.float32))
    assert dm.class_weights.mean().item() == pytest.approx(1.0)
    assert dm.class_weights[0] > dm.class_weights[1]  # NORMAL is the minority here
    assert _ready(folder_datamodule(folder)).class_weights is None


def test_balance_sampler_draws_roughly_balanced(folder: Path) -> None:
    dm = _ready(folder_datamodule(folder, balance="sampler"))
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSampler) and sampler.weights is not None
    labels = dm.data_train.records["label"].to_numpy()

    def epoch(number: int) -> list[int]:
        sampler.set_epoch(number)
        return [key.index for key in sampler]

    drawn = np.concatenate([labels[epoch(e)] for e in range(40)])
    assert _train_counts(dm)[1] > 2 * _train_counts(dm)[0]  # imbalanced before
    assert abs(drawn.mean() - 0.5) < 0.05


def test_unknown_options_raise(folder: Path) -> None:
    with pytest.raises(ValueError, match="balance must be one of"):
        folder_datamodule(folder, balance="oversample")
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        folder_datamodule(folder, on_bad_image="ignore")


def test_hparams_are_plain_and_load_with_weights_only(folder: Path, tmp_path: Path) -> None:
    dm = folder_datamodule(folder, class_names=["NORMAL", "PNEUMONIA"], fractions=[0.8, 0.1, 0.1])
    assert "source" not in dm.hparams and "transforms" not in dm.hparams
    torch.save(dict(dm.hparams), tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)
    assert loaded["class_names"] == ("NORMAL", "PNEUMONIA") and loaded["fractions"] == (0.8, 0.1, 0.1)


def test_medmnist_source_through_the_module(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "pm.npz", **arrays)
    dm = _ready(
        ChestXrayDataModule(str(tmp_path), lambda d: MedMNISTSource(d, 28, "pm.npz"), small_transforms())
    )
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (12, 4, 4)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 1, 0, 1]


def _compose_data(name: str, tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        base = [
            f"+data={name}",
            f"+paths.data_dir={tmp_path}",
            f"+paths.output_dir={tmp_path / 'run'}",
            "+seed=1",
        ]
        return compose(overrides=[*base, *overrides])


@pytest.mark.parametrize(
    ("name", "source"),
    [("chest_xray", "FolderSource"), ("manifest", "ManifestSource"), ("pneumoniamnist", "MedMNISTSource")],
)
def test_data_configs_instantiate(name: str, source: str, tmp_path: Path) -> None:
    dm = instantiate(_compose_data(name, tmp_path).data)
    assert type(dm.source).__name__ == source
    assert [type(t).__name__ for t in dm.transforms.eval] == [
        "CLAHE",
        "Resize",
        "ToRGB",
        "Normalize",
        "ToTensorV2",
    ]
    assert [type(t).__name__ for t in dm.transforms.augment] == ["Affine", "RandomBrightnessContrast"]
    assert dm.transforms.preprocess[1].height == dm.hparams.image_size == 224


def test_synthetic_config_end_to_end(tmp_path: Path) -> None:
    dm = _ready(instantiate(_compose_data("synthetic", tmp_path).data))
    assert dm.split_path == str(tmp_path / "run" / "split.csv")
    assert len(dm.records) == 160 and dm.records["label"].mean() == 0.5
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 64, 64) and labels.dtype == torch.int64
