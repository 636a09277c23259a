"""Albumentations pipelines declared in YAML, with ONE eval pipeline for validation, test and prediction."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A


class XrayTransforms:
    """Build `train` (preprocess + augment + postprocess) and `eval` (preprocess + postprocess) once.

    `preprocessing`, `train_tail` and `eval_tail` split them at the point a pre-processed image cache stores.
    """

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
        self.preprocessing = A.Compose(self.preprocess)
        self.train_tail = A.Compose([*self.augment, *self.postprocess])
        self.eval_tail = A.Compose(self.postprocess)

    def per_image_train(self, cached: bool) -> A.Compose:
        """The train steps left per image when a batch stage (data.batch_augment) does the postprocess."""
        return A.Compose([*([] if cached else self.preprocess), *self.augment])
