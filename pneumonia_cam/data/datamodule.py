"""The Lightning data module: any ImageSource -> checked, patient-grouped split -> balanced DataLoaders.

Optional caches (off by default): `image_cache` serves pre-processed pixels from a memory-mapped array, and
`feature_cache` serves the frozen backbone's pooled features instead of images (see feature_cache.py).
`batch_augment` moves train augmentation + normalisation from each image to whole uint8 batches on the device.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
from lightning import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from pneumonia_cam.data.balance import (
    BALANCE_MODES,
    class_counts,
    loss_weights,
    sampling_weights,
    undersample,
)
from pneumonia_cam.data.batch_augment import BatchAugment, BatchStage, MixBatch
from pneumonia_cam.data.checks import (
    DUPLICATE_POLICIES,
    HASH_SIDE,
    cross_split_duplicates,
    scan_cache_file,
    scan_images,
)
from pneumonia_cam.data.dataset import XrayDataset
from pneumonia_cam.data.dicom import DicomPolicy
from pneumonia_cam.data.disk_cache import ONE_PROCESS, Ranks
from pneumonia_cam.data.feature_cache import (
    FeatureCache,
    FeatureCacheConfig,
    FeatureDataset,
    FeatureEncoder,
    View,
)
from pneumonia_cam.data.image_cache import ImageCache, ImageCacheConfig
from pneumonia_cam.data.sampling import EpochSampler
from pneumonia_cam.data.sources import ImageSource, filter_views, validate_records
from pneumonia_cam.data.splits import split_csv_bytes, split_records, write_split_csv
from pneumonia_cam.data.transforms import XrayTransforms

log = logging.getLogger(__name__)

BAD_IMAGE_MODES = ("error", "skip")
SPLIT_FILENAME = "split.csv"


class ChestXrayDataModule(LightningDataModule):
    """Split once (seeded, by patient), check every image, and serve train/val/test/predict loaders."""

    def __init__(
        self,
        data_dir: str,
        source: Callable[[str], ImageSource],
        transforms: XrayTransforms,
        image_size: int = 224,
        class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
        fractions: Sequence[float] = (0.85, 0.074, 0.074),
        seed: int = 42,
        balance: str = "none",
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_bad_image: str = "error",
        check_images: bool = True,
        scan_cache: str | None = None,
        duplicates: str = "warn",
        duplicate_distance: int = 10,
        output_dir: str | None = None,
        folds: int | None = None,
        fold: int = 0,
        image_cache: dict | None = None,
        feature_cache: dict | None = None,
        batch_augment: BatchAugment | None = None,
        mix: MixBatch | None = None,
        dicom: dict | None = None,
        views: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        # Plain Python values only, so checkpoints load with torch.load(weights_only=True) (no ListConfig).
        data_dir = str(data_dir)
        class_names = tuple(str(name) for name in class_names)
        fractions = tuple(float(fraction) for fraction in fractions)
        output_dir = None if output_dir is None else str(output_dir)
        image_cache = asdict(ImageCacheConfig(**(image_cache or {})))
        feature_cache = asdict(FeatureCacheConfig(**(feature_cache or {})))
        dicom = asdict(DicomPolicy.from_config(dicom))
        views = None if views is None else [str(view) for view in views]
        _check_choice("balance", balance, BALANCE_MODES)
        _check_choice("on_bad_image", on_bad_image, BAD_IMAGE_MODES)
        _check_choice("duplicates", duplicates, DUPLICATE_POLICIES)
        scan_cache = None if scan_cache is None else str(scan_cache)
        if folds is not None and not (folds >= 2 and 0 <= fold < folds):
            raise ValueError(f"cross-validation needs folds >= 2 and 0 <= fold < folds, got {folds=} {fold=}")
        if mix is not None and batch_augment is None:
            raise ValueError("data.mix (Mixup / CutMix) runs in the batch stage: set data/batch_augment too")
        if batch_augment is not None and feature_cache["enabled"]:
            raise ValueError(
                "data.batch_augment and data.feature_cache exclude each other: the feature cache augments "
                "per image (data.transforms.augment) before the backbone; drop one of them"
            )
        self.save_hyperparameters(logger=False, ignore=["source", "transforms", "batch_augment", "mix"])

        self.source = source(data_dir)
        self.source.dicom = DicomPolicy(**dicom)
        self.transforms = transforms
        self.eval_transform = transforms.eval
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.class_weights: torch.Tensor | None = None
        self.records: pd.DataFrame | None = None
        self.split_path: str | None = None
        self.split_hash: str | None = None
        self.data_train: XrayDataset | None = None
        self.data_val: XrayDataset | None = None
        self.data_test: XrayDataset | None = None
        self.image_cache_config = ImageCacheConfig(**image_cache)
        self.feature_cache_config = FeatureCacheConfig(**feature_cache)
        self._pixels: dict[str, str] = {}  # what the reader serves, for feature keys: {} = the source's files
        self._feature_cache: FeatureCache | None = None
        self._encoder: FeatureEncoder | None = None  # from the LightningModule: `feature_encoder(precision)`
        self._features: dict[str, FeatureDataset] = {}
        self.batch_augment = batch_augment
        self.mix = mix
        self.batch_stage: BatchStage | None = None
        self.image_facts: pd.DataFrame | None = None  # the image scan: problem, size, bits, dHash per path
        self._resume_at: tuple[int, int] | None = None  # (epoch, position) of a restored mid-epoch checkpoint

    def prepare_data(self) -> None:
        """Download or generate the data (Lightning calls this on one process only)."""
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Build records, split, image check and datasets once; later calls (fit, then test) reuse them."""
        if self.feature_cache_config.enabled and self.trainer is not None and self._encoder is None:
            # the model side builds what the cache runs, and refuses a backbone that is not frozen, before
            # any work is done
            self._encoder = self.trainer.lightning_module.feature_encoder(self.feature_cache_config.precision)
        if self.records is not None:
            return
        records = validate_records(self.source.records(), self.class_names, self.source)
        if self.hparams.views is not None:
            records = filter_views(records, self.hparams.views, self.source)
        excluded = self.source.excluded
        if excluded:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(excluded.items()))
            log.info("%s left out %d rows: %s", type(self.source).__name__, excluded.total(), reasons)
        self.image_facts = self._scan(records) if self.hparams.check_images else None
        bad = {} if self.image_facts is None else self._bad_images(self.image_facts)
        good = records[~records["path"].isin(bad)]
        fold = None if self.hparams.folds is None else (self.hparams.folds, self.hparams.fold)
        split = split_records(good, self.hparams.fractions, self.hparams.seed, fold).assign(status="ok")
        if self.image_facts is not None and self.hparams.duplicates != "off":
            self._check_duplicates(split)
        skipped = records[records["path"].isin(bad)].assign(status=lambda df: df["path"].map(bad))
        self.records = pd.concat([split, skipped], ignore_index=True)
        self._write_split()
        self._log_split()

        train = split[split["split"] == "train"]
        counts = self._class_counts(train)
        if self.hparams.balance == "undersample":
            train = undersample(train, counts, self.hparams.seed)
        elif self.hparams.balance == "loss_weights":
            self.class_weights = loss_weights(counts)
        self.batch_stage = self._batch_stage()
        reader, train_transform, eval_transform = self._pixel_pipeline(split["path"].tolist())
        train_transform.set_random_seed(self.hparams.seed)
        train_dtype = torch.float32 if self.batch_stage is None else torch.uint8
        self.data_train = XrayDataset(train, reader, train_transform, dtype=train_dtype)
        self.data_val = XrayDataset(split[split["split"] == "val"], reader, eval_transform)
        self.data_test = XrayDataset(split[split["split"] == "test"], reader, eval_transform)
        log.info(
            "Split sizes: train %d, val %d, test %d",
            len(self.data_train),
            len(self.data_val),
            len(self.data_test),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, or drawn by class weight (balance=sampler), from (seed, epoch) alone (EpochSampler)."""
        dataset = self._served("train")
        weights = None
        if self.hparams.balance == "sampler":
            train = self.data_train.records
            weights = sampling_weights(train["label"], self._class_counts(train))
        ranks = (1, 0) if self.trainer is None else (self.trainer.world_size, self.trainer.global_rank)
        sampler = EpochSampler(len(dataset), self.hparams.seed, weights, *ranks)
        if self._resume_at is not None:
            sampler.start_at(*self._resume_at)
            self._resume_at = None
        return self._loader(dataset, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._served("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._served("test"))

    def predict_dataloader(self) -> DataLoader:
        """Prediction runs on the test split, with the shared eval transform."""
        return self.test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch (and the batch stage's streams): a resume continues exactly."""
        if self.trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return {}
        trainer = self.trainer
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # this epoch's batches run so far
        state: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "position": batches * self.hparams.batch_size,
            "epoch_done": batches >= trainer.num_training_batches,
        }
        if self.batch_stage is not None:
            state["batch_stage"] = self.batch_stage.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning calls this on resume, after setup() and before train_dataloader()."""
        if not state_dict:
            return
        epoch, position = state_dict["epoch"], state_dict["position"]
        self._resume_at = (epoch + 1, 0) if state_dict["epoch_done"] else (epoch, position)
        if self.batch_stage is not None and "batch_stage" in state_dict:
            self.batch_stage.load_state_dict(state_dict["batch_stage"])

    def _ranks(self) -> Ranks:
        """The processes of this machine that build each cache together, a shard each (DDP; else just one)."""
        if self.trainer is None or self.trainer.num_devices == 1:
            return ONE_PROCESS
        run = self.trainer.strategy.broadcast(uuid.uuid4().hex[:12])  # names this run's shard files
        tag = f"{run}-node{self.trainer.node_rank}"
        return Ranks(self.trainer.local_rank, self.trainer.num_devices, self._barrier, tag)

    def _barrier(self) -> None:
        """Wait for every DDP rank (a no-op without a Trainer or with one process)."""
        if self.trainer is not None:
            self.trainer.strategy.barrier("data_cache")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With data.batch_augment, finish each uint8 train batch (augment + normalise) on its device."""
        if self.batch_stage is None or self.trainer is None or not self.trainer.training:
            return batch
        return self.batch_stage(*batch)

    def _batch_stage(self) -> BatchStage | None:
        """The batch stage of data.batch_augment, seeded per DDP rank so ranks augment differently."""
        if self.batch_augment is None:
            return None
        rank = 0 if self.trainer is None else self.trainer.global_rank
        seed = self.hparams.seed + rank
        return BatchStage(self.batch_augment, self.transforms.postprocess, seed, self.mix, self.num_classes)

    def _pixel_pipeline(self, paths: list[str]) -> tuple[Callable[[str], np.ndarray], A.Compose, A.Compose]:
        """Reader and train/eval transforms: decode files each time, or read the pre-processed image cache."""
        batched = self.batch_stage is not None
        if not self.image_cache_config.enabled:
            return self.source.read, self.transforms.train_steps(batched=batched), self.eval_transform
        cache = ImageCache.build(
            paths,
            self.source.read,
            self.transforms.preprocessing,
            self.image_cache_config.dir,
            threads=max(2, self.hparams.num_workers),
            ranks=self._ranks(),
        )
        self._pixels = {"image_cache": cache.key}
        return (
            cache.read,
            self.transforms.train_steps(cached=True, batched=batched),
            self.transforms.eval_tail,
        )

    def _served(self, split: str) -> Dataset:
        """The split's images, or (feature cache on) its cached pooled features, built on first use."""
        dataset = {"train": self.data_train, "val": self.data_val, "test": self.data_test}[split]
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        if not self.feature_cache_config.enabled:
            return dataset
        if split not in self._features:
            features = self._cache().features(dataset, self._views(split), split, self._pixels)
            self._features[split] = FeatureDataset(features, dataset.records["label"])
        return self._features[split]

    def _views(self, split: str) -> list[View]:
        """K seeded train views when augmenting, else the single deterministic eval view."""
        views, eval_transform = self.feature_cache_config.views, self.data_val.transform
        if split != "train" or views == 0 or not self.transforms.augment:
            return [(eval_transform, None)]
        return [(self.data_train.transform, self.hparams.seed)] * views

    def _cache(self) -> FeatureCache:
        """The feature cache of the Trainer's model (created once: it hashes the backbone weights)."""
        if self._encoder is None:
            raise RuntimeError("data.feature_cache needs the model: use it through trainer.fit/validate/test")
        if self._feature_cache is None:
            self._feature_cache = FeatureCache(
                self.feature_cache_config,
                self._encoder,
                num_workers=self.hparams.num_workers,
                ranks=self._ranks(),
            )
        return self._feature_cache

    def _scan(self, records: pd.DataFrame) -> pd.DataFrame:
        """Decode every image once (or reuse the scan cache): problem, size, bit depth, dHash per path."""
        cache = self.hparams.scan_cache
        source = type(self.source).__name__, str(self.source.data_dir), asdict(self.source.dicom)
        cache_file = None if cache is None else scan_cache_file(cache, *source)
        threads = max(2, self.hparams.num_workers)
        return scan_images(records["path"].tolist(), self.source.read, cache_file, threads)

    def _bad_images(self, facts: pd.DataFrame) -> dict[str, str]:
        """{path: reason} of the images that do not decode, refused or skipped as data.on_bad_image says."""
        failed = facts[facts["problem"].notna()]
        bad = dict(zip(failed["path"], failed["problem"], strict=True))
        if bad and self.hparams.on_bad_image == "error":
            listing = "\n".join(f"  {path}: {reason}" for path, reason in bad.items())
            raise ValueError(
                f"{len(bad)} of {len(facts)} images cannot be read (data.on_bad_image=skip drops them):\n"
                f"{listing}"
            )
        if bad:
            log.warning(
                "Skipping %d of %d unreadable images (listed in %s)", len(bad), len(facts), SPLIT_FILENAME
            )
        return bad

    def _check_duplicates(self, split: pd.DataFrame) -> None:
        """Near-identical images in two splits leak: warn with the pairs, or (duplicates=error) refuse."""
        pairs = cross_split_duplicates(split, self.image_facts, self.hparams.duplicate_distance)
        if pairs.empty:
            return
        listing = "\n".join(
            f"  {row.path_a} ({row.split_a}) ~ {row.path_b} ({row.split_b}): {row.distance} bits"
            for row in pairs.head(20).itertuples()
        )
        message = (
            f"{len(pairs)} near-duplicate image pair(s) across splits (dHash within "
            f"{self.hparams.duplicate_distance} of {HASH_SIDE * HASH_SIDE} bits; data.duplicates=error "
            f"refuses, off skips; src/inspect_data.py lists them all):\n{listing}"
        )
        if self.hparams.duplicates == "error":
            raise ValueError(message)
        log.warning(message)

    def _write_split(self) -> None:
        """Record the split (and skipped images) as split.csv in the run folder; its hash names the split."""
        root = self.source.data_dir
        is_global_zero = self.trainer is None or self.trainer.is_global_zero
        if self.hparams.output_dir is None or not is_global_zero:
            self.split_hash = hashlib.sha256(split_csv_bytes(self.records, root)).hexdigest()
            return
        self.split_path = str(Path(self.hparams.output_dir) / SPLIT_FILENAME)
        self.split_hash = write_split_csv(self.records, self.split_path, root)

    def _log_split(self) -> None:
        """Send the split's hash and sizes to the run's loggers, so a run names the exact data it saw."""
        if self.trainer is None:
            return
        counts = self.records.groupby(["split", "status"]).size()
        summary = {f"data/n_{split}": int(n) for (split, status), n in counts.items() if status == "ok"}
        summary["data/n_skipped"] = int((self.records["status"] != "ok").sum())
        summary["data/split_sha256"] = self.split_hash
        for logger in self.trainer.loggers:
            logger.log_hyperparams(summary)

    def _class_counts(self, train: pd.DataFrame) -> np.ndarray:
        """Counts under this module's balance mode, which refuses a class missing from train."""
        return class_counts(train["label"], self.num_classes, self.hparams.balance)

    def _loader(self, dataset: Dataset, sampler: EpochSampler | None = None) -> DataLoader:
        """One place for the DataLoader options shared by every split (features need no workers)."""
        workers = 0 if isinstance(dataset, FeatureDataset) else self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            drop_last=False,
        )


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Reject typos in string options up front, listing what is allowed."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
