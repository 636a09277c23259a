"""Albumentations pipelines declared in YAML, with ONE eval pipeline for validation, test and prediction."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A


class XrayTransforms:
    """Build `train` (preprocess + augment + postprocess) and `eval` (preprocess + postprocess) once."""

    def __init__(
        self,
        preprocess: Sequence[A.BasicTransform],
        augment: Sequence[A.BasicTransform],
        postprocess: Sequence[A.BasicTransform],
    ) -> None:
        self.preprocess = list(preprocess)
        self.augment = list(augment)
        self.postprocess = list(postprocess)
        self.train = A.Compose([*self.preprocess, *self.augment, *self.postprocess])
        self.eval = A.Compose([*self.preprocess, *self.postprocess])
