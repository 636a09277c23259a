"""Albumentations pipelines declared in YAML, with ONE eval pipeline for validation, test and prediction."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A


class XrayTransforms:
    """Build `eval` (preprocess + postprocess) once; `train_steps` inserts augment in between.

    `preprocessing` and `eval_tail` split the eval pipeline at the point a pre-processed image cache stores.
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
        self.eval = A.Compose([*self.preprocess, *self.postprocess])
        self.preprocessing = A.Compose(self.preprocess)
        self.eval_tail = A.Compose(self.postprocess)

    def train_steps(self, cached: bool = False, batched: bool = False) -> A.Compose:
        """Per-image train pipeline: preprocess, augment, postprocess, less what a cache or batch stage does.

        `cached`: the image cache already holds preprocess output; `batched`: data.batch_augment applies the
        postprocess to whole batches.
        """
        return A.Compose(
            [*([] if cached else self.preprocess), *self.augment, *([] if batched else self.postprocess)]
        )
