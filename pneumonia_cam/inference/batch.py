"""Predict (and optionally explain) many image files in batches; a bad file is reported, never fatal."""

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pneumonia_cam.data.image_io import ImageReadError
from pneumonia_cam.data.preprocessor import PreparedImage
from pneumonia_cam.inference.model import InferenceModel


@dataclass
class Prediction:
    """One input's outcome: a label and P(positive class), or the error that stopped it."""

    path: str
    label: str | None = None
    probability: float | None = None
    error: str | None = None
    original: np.ndarray | None = None
    cam: np.ndarray | None = None

    def row(self, threshold: float) -> dict:
        """The CSV row for this input."""
        return {
            "path": self.path,
            "prediction": self.label or "",
            "probability": "" if self.probability is None else round(self.probability, 6),
            "threshold": threshold,
            "error": self.error or "",
        }


def _prepare(model: InferenceModel, path: Path) -> PreparedImage | str:
    """The prepared image, or why it could not be read; any other error (a bug) propagates."""
    try:
        return model.prepare(path)
    except (ImageReadError, OSError) as error:  # unreadable input is reported in the output, not raised
        return str(error)


def predict_paths(
    model: InferenceModel,
    paths: Sequence[Path],
    batch_size: int = 16,
    cam_method: str | None = None,
    cam_options: dict | None = None,
    cam_target: int | None = None,
    num_threads: int = 2,
) -> Iterator[Prediction]:
    """Yield one Prediction per path, in order; CAMs (if asked) explain `cam_target` or the prediction."""
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            prepared = list(pool.map(lambda p: _prepare(model, p), chunk))
            good = [i for i, item in enumerate(prepared) if isinstance(item, PreparedImage)]
            results = [Prediction(str(p), error=item) for p, item in zip(chunk, prepared, strict=True)]
            if good:
                images = [prepared[i] for i in good]
                if cam_method:  # the CAM's own forward pass gives the probabilities too
                    probs, cams = model.explain_with_probs(
                        images, cam_target, cam_method, **(cam_options or {})
                    )
                else:
                    probs, cams = (
                        model.predict_proba(torch.stack([p.tensor for p in images])),
                        [None] * len(good),
                    )
                labels = model.decide(probs)
                for index, image, prob, label, cam in zip(good, images, probs, labels, cams, strict=True):
                    results[index] = Prediction(
                        path=str(chunk[index]),
                        label=model.class_names[int(label)],
                        probability=float(prob[-1]),
                        original=image.original,
                        cam=cam,
                    )
            yield from results
