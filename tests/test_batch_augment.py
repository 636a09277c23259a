"""Batch augmentation (data.batch_augment): same geometry as albumentations, exact normalisation, wiring."""

from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from data_helpers import IMAGENET_MEAN, IMAGENET_STD, folder_datamodule, make_class_folders, small_transforms
from helpers import compose_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pneumonia_cam.data.batch_augment import BatchAugment, BatchNormalize, BatchStage, MixBatch, gaussian_blur
from pneumonia_cam.data.dataset import XrayDataset
from pneumonia_cam.data.image_io import read_grayscale
from src.train import train

POSTPROCESS = [A.ToRGB(num_output_channels=3), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()]


def smooth_image(height: int = 64, width: int = 48) -> np.ndarray:
    """A smooth, non-square uint8 pattern, so resampling differences stay small and orientation shows."""
    y, x = np.mgrid[0:height, 0:width]
    return (127 + 100 * np.sin(x / 7.0) * np.cos(y / 9.0) + y).clip(0, 255).astype(np.uint8)


def fixed(**params: float) -> BatchAugment:
    """A BatchAugment whose affine always applies these exact parameters and never touches intensity."""
    rotate, scale, translate = (
        params.get("rotate", 0.0),
        params.get("scale", 1.0),
        params.get("translate", 0.0),
    )
    return BatchAugment(
        rotate=(rotate, rotate), scale=(scale, scale), translate=(translate, translate), affine_p=1.0,
        intensity_p=0.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [{"rotate": 30.0}, {"rotate": -20.0, "scale": 0.9}, {"scale": 1.2}, {"translate": 0.25}],
)
def test_affine_matches_albumentations(params):
    """Rotation sense, zoom and shift mean what albumentations' Affine means, on a non-square image."""
    image = smooth_image()
    reference = A.Affine(
        rotate=(params.get("rotate", 0.0),) * 2,
        scale=(params.get("scale", 1.0),) * 2,
        translate_percent=(params.get("translate", 0.0),) * 2,  # 0.25 of 64 x 48: whole pixels, as A rounds
        p=1.0,
    )(image=image)["image"].astype(np.float32)
    ours = fixed(**params)(torch.from_numpy(image)[None, None].float())[0, 0].numpy()
    assert np.abs(ours - reference).mean() < 0.5  # of 0..255; the wrong rotation sense gives ~50


def test_identity_parameters_change_nothing():
    """Zero rotation and shift at scale 1 resample every pixel onto itself; p=0 steps never run."""
    images = torch.randint(0, 256, (4, 1, 20, 30), dtype=torch.uint8).float()
    torch.testing.assert_close(fixed()(images), images, atol=1e-3, rtol=0)
    untouched = BatchAugment(rotate=(-40, 40), brightness=0.5, contrast=0.5, affine_p=0.0, intensity_p=0.0)
    assert torch.equal(untouched(images), images)


def test_brightness_shifts_each_image_by_its_own_constant():
    """Brightness alone adds one constant per image, within +-limit x 255, different between images."""
    images = torch.full((16, 1, 8, 8), 128.0)
    out = BatchAugment(brightness=0.2, contrast=0.0, affine_p=0.0, intensity_p=1.0)(images)
    shift = (out - images).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift))
    assert shift.abs().max() <= 0.2 * 255 + 1e-4
    assert shift[:, 0].unique().numel() == 16
    assert out.min() >= 0 and out.max() <= 255


def test_affine_probability_hits_about_that_share_of_images():
    """affine_p=0.5 warps roughly half the batch; the other images come back untouched."""
    images = smooth_image(32, 32)[None, None].repeat(400, 0)
    out = BatchAugment(rotate=(20, 30), affine_p=0.5, intensity_p=0.0)(torch.from_numpy(images).float())
    warped = (out != torch.from_numpy(images).float()).flatten(1).any(1).float().mean().item()
    assert 0.4 < warped < 0.6


def test_batch_normalize_equals_the_albumentations_postprocess():
    """The fused ToRGB + Normalize gives the per-image eval tail's exact float input."""
    image = smooth_image()
    reference = A.Compose(POSTPROCESS)(image=image)["image"]
    ours = BatchNormalize(POSTPROCESS)(torch.from_numpy(image)[None, None].float())[0]
    assert ours.shape == reference.shape == (3, 64, 48)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_batch_normalize_refuses_steps_it_cannot_fuse():
    """A postprocess step the batch stage cannot reproduce is named, not skipped."""
    with pytest.raises(ValueError, match="HorizontalFlip"):
        BatchNormalize([A.HorizontalFlip(p=1.0), A.Normalize()])


def test_stage_is_seeded_and_wants_uint8():
    """The same seed gives the same augmented batch; float input is refused (it would be normalised twice)."""
    images = torch.randint(0, 256, (8, 1, 24, 24), dtype=torch.uint8)
    labels = torch.arange(8) % 2
    first, second = (BatchStage(BatchAugment(), POSTPROCESS, seed=3)(images, labels)[0] for _ in range(2))
    assert torch.equal(first, second)
    assert not torch.equal(first, BatchStage(BatchAugment(), POSTPROCESS, seed=4)(images, labels)[0])
    assert BatchStage(BatchAugment(), POSTPROCESS, seed=3)(images, labels)[1] is labels  # no mixing
    with pytest.raises(TypeError, match="uint8"):
        BatchStage(BatchAugment(), POSTPROCESS, seed=3)(images.float(), labels)


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="rotate"):
        BatchAugment(rotate=(10, -10))
    with pytest.raises(ValueError, match="affine_p"):
        BatchAugment(affine_p=1.5)


@pytest.mark.parametrize("image_cache", [False, True])
def test_datamodule_serves_uint8_train_batches_and_finishes_them_on_transfer(tmp_path, image_cache):
    """Train batches leave the loader as uint8 and reach the model normalised; val batches are per-image."""
    make_class_folders(tmp_path / "data")
    transforms = small_transforms()
    no_augment = type(transforms)(transforms.preprocess, [], transforms.postprocess)
    dm = folder_datamodule(
        tmp_path / "data",
        transforms=no_augment,
        batch_augment=BatchAugment(affine_p=0.0, intensity_p=0.0),
        image_cache={"enabled": image_cache, "dir": str(tmp_path / "cache")},
    )
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 16, 16)

    class Trainer:  # the hook only asks whether the trainer is training
        training = True

    dm.trainer = Trainer()
    finished, same_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert same_labels is labels
    # without augmentation the batch stage must give what the per-image eval pipeline gives for those pixels
    expected = torch.stack([A.Compose(POSTPROCESS)(image=i[0].numpy())["image"] for i in images])
    torch.testing.assert_close(finished, expected, atol=1e-5, rtol=0)
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.dtype == torch.float32 and val_images.shape[1] == 3
    Trainer.training = False
    assert dm.on_after_batch_transfer((images, labels), 0)[0] is images


def test_per_image_dataset_refuses_float_pixels_for_the_batch_stage(tmp_path):
    """A per-image step that leaves floats would be truncated to uint8: named with the file instead."""
    path = make_class_folders(tmp_path, counts=(1, 0))[0]
    records = pd.DataFrame({"path": [str(path)], "label": [0]})
    dataset = XrayDataset(records, read_grayscale, A.Compose([A.Normalize()]), dtype=torch.uint8)
    with pytest.raises(ValueError, match=path.name):
        dataset[0]


def test_batch_augment_excludes_the_feature_cache(tmp_path):
    with pytest.raises(ValueError, match="feature_cache"):
        folder_datamodule(tmp_path, batch_augment=BatchAugment(), feature_cache={"enabled": True})


def test_smoke_training_with_the_batch_stage(cfg_train):
    """train.py with data/batch_augment=xray: one fast_dev_run step on batches finished by the stage."""
    cfg = compose_config("train.yaml", ["experiment=smoke", "data/batch_augment=xray"])
    with open_dict(cfg_train):
        cfg_train.data.batch_augment = cfg.data.batch_augment
        cfg_train.data.transforms.augment = []
        cfg_train.trainer.fast_dev_run = True
    HydraConfig().set_config(cfg_train)
    metrics, objects = train(cfg_train)
    assert objects["datamodule"].batch_stage is not None
    assert objects["trainer"].global_step == 1
    assert torch.isfinite(metrics["train/loss"])


def test_mixup_targets_match_the_pixels():
    """Each mixed image is lambda x itself + (1 - lambda) x its mirror in the batch, and so is its target."""
    images = torch.rand(6, 1, 8, 8) * 255
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    mixed, targets = MixBatch(mixup_alpha=0.4)(images, labels, 2, torch.Generator().manual_seed(0))
    lam = float(targets[2, 1])  # image 2 is PNEUMONIA and its mirror (image 3) NORMAL
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    torch.testing.assert_close(targets, lam * onehot + (1 - lam) * onehot.flip(0))


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    images = torch.zeros(4, 1, 20, 20)
    images[2:] = 255.0  # images 0-1 black, 2-3 white: the pasted box shows where the mirror's pixels went
    labels = torch.tensor([0, 0, 1, 1])
    mixed, targets = MixBatch(cutmix_alpha=1.0)(images, labels, 2, torch.Generator().manual_seed(1))
    pasted = (mixed[0, 0] == 255.0).float().mean()
    assert 0 < pasted < 1
    torch.testing.assert_close(targets[0], torch.tensor([1 - pasted, pasted]))


def test_mix_is_wired_through_the_datamodule_and_the_loss(cfg_train):
    """data/mix=cutmix with the batch stage: soft targets reach the loss and training runs."""
    cfg_train = compose_config(
        "train.yaml",
        [
            "experiment=smoke",
            "data/batch_augment=xray",
            "data/mix=cutmix",
            "data.transforms.augment=[]",
            "trainer.max_epochs=1",
            "test=false",
            f"paths.data_dir={cfg_train.paths.data_dir}",
            f"paths.output_dir={cfg_train.paths.output_dir}",
            "extras.print_config=false",
            "extras.enforce_tags=false",
            "callbacks.rich_progress_bar=null",
        ],
    )
    HydraConfig().set_config(cfg_train)
    metrics, objects = train(cfg_train)
    datamodule = objects["datamodule"]
    images, labels = next(iter(datamodule.train_dataloader()))
    assert isinstance(datamodule.batch_stage.mix, MixBatch)
    _, targets = datamodule.batch_stage(images, labels)
    assert targets.shape == (len(labels), 2) and targets.dtype == torch.float32
    assert torch.isfinite(metrics["train/loss"])
    with pytest.raises(ValueError, match="batch stage"):
        folder_datamodule(Path(cfg_train.paths.output_dir), mix=MixBatch(mixup_alpha=0.2))


def test_exposure_steps_by_hand():
    """Gamma, blur and noise each do what they say when forced on, and draw nothing when off."""
    image = torch.linspace(0, 255, 64).view(1, 1, 8, 8).repeat(2, 1, 1, 1)
    gamma = BatchAugment(affine_p=0, intensity_p=0, gamma=(2.0, 2.0), gamma_p=1.0)
    torch.testing.assert_close(gamma(image), 255.0 * (image / 255.0) ** 2)
    flat = torch.full((1, 1, 9, 9), 100.0)
    flat[..., 4, 4] = 200.0
    blurred = gaussian_blur(flat[0], 1.0)
    assert float(blurred.sum()) == pytest.approx(float(flat.sum()), rel=1e-5) and blurred.max() < 200.0
    noisy = BatchAugment(affine_p=0, intensity_p=0, noise_std=0.05, noise_p=1.0)(flat.repeat(4, 1, 1, 1))
    assert not torch.equal(noisy, flat.repeat(4, 1, 1, 1)) and (noisy - 100).abs().max() < 255
    a, b = (torch.Generator().manual_seed(5) for _ in range(2))
    plain = BatchAugment()(image, a)
    with_disabled_steps = BatchAugment(gamma=(0.5, 2.0), blur_sigma=(0.5, 1.0), noise_std=0.1)(image, b)
    assert torch.equal(plain, with_disabled_steps) and torch.equal(a.get_state(), b.get_state())
