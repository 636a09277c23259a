"""Class balancing of the train split as plain functions: undersampling, loss weights, sampling weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

BALANCE_MODES = ("none", "undersample", "sampler", "loss_weights")


def class_counts(labels: pd.Series, num_classes: int, balance: str = "none") -> np.ndarray:
    """Train images per class; every balancing mode needs every class present."""
    counts = np.bincount(labels.to_numpy(dtype=np.int64), minlength=num_classes)
    if balance != "none" and counts.min() == 0:
        raise ValueError(f"balance={balance!r} needs every class in train, got counts {counts.tolist()}")
    return counts


def undersample(train: pd.DataFrame, counts: np.ndarray, seed: int) -> pd.DataFrame:
    """Keep `counts.min()` rows of each class, drawn without replacement by a seeded generator, in row order
    (the reference study's 1,540 / 1,540)."""
    rng = np.random.default_rng(seed)
    keep = [rng.choice(group.index, size=counts.min(), replace=False) for _, group in train.groupby("label")]
    return train.loc[np.sort(np.concatenate(keep))]


def loss_weights(counts: np.ndarray) -> torch.Tensor:
    """Class weights inversely proportional to the counts, with mean 1 (balance=loss_weights)."""
    inverse = 1.0 / counts.astype(np.float64)
    return torch.tensor(inverse / inverse.mean(), dtype=torch.float32)


def sampling_weights(labels: pd.Series, counts: np.ndarray) -> list[float]:
    """Per-image draw weights inversely proportional to its class frequency (balance=sampler)."""
    return (1.0 / counts[labels.to_numpy(dtype=np.int64)]).tolist()
