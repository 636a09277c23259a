"""The spool's consumer: each received instance through the one InferenceModel into an SR and an overlay SC.

Decoding goes through the model's own preprocessor (the training run's DICOM policy) reading the spooled
file; probabilities, the decision and the CAM come from the model. Results reach the outbox durably before
the instance leaves the spool, so a node killed at any point redoes at most the instance in hand, and
because result UIDs are deterministic a redone instance overwrites, never duplicates, its results.
"""

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from pneumonia_cam.data.errors import ImageReadError
from pneumonia_cam.data.preprocessor import PreparedImage
from pneumonia_cam.dicom_node.results import OVERLAY_LABEL, Finding, ResultBuilder
from pneumonia_cam.dicom_node.spool import BackgroundLoop, DurableFolder
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.utils.overlay import caption, overlay_cam

log = logging.getLogger(__name__)

# highdicom warns about odd Patient's Name values and quotes them: such warnings must never reach a log
PERSON_NAME_WARNING = r".*intended person name"


@dataclass(frozen=True)
class CamStyle:
    """Which CAM the overlay shows and how it is drawn (the `cam` config group)."""

    method: str
    target_class: int | None
    options: dict
    alpha: float
    colormap: str


@dataclass
class Received:
    """A spooled instance decoded for the model: its header and its prepared image."""

    key: str
    header: Dataset
    prepared: PreparedImage


class Worker(BackgroundLoop):
    """A thread that turns spooled instances into results in the outbox, a batch per model call."""

    thread_name = "dicom-node-worker"

    def __init__(
        self,
        model: InferenceModel,
        builder: ResultBuilder,
        cam: CamStyle,
        incoming: DurableFolder,
        outbox: DurableFolder,
        failed: DurableFolder,
        batch_size: int,
        on_result: Callable[[], None],
    ) -> None:
        self.model, self.builder, self.cam = model, builder, cam
        self.incoming, self.outbox, self.failed = incoming, outbox, failed
        self.batch_size = int(batch_size)
        self.on_result = on_result
        self.processed = 0
        super().__init__()

    def run(self) -> None:
        """Process batches while the spool has instances, else wait for the SCP's wake-up."""
        while not self.stopping.is_set():
            keys = self.incoming.pending()[: self.batch_size]
            if not keys:
                self.wake.wait()
                self.wake.clear()
                continue
            self.process(keys)

    def process(self, keys: list[str]) -> None:
        """Decode, one model call per batch, both results per instance, then drop it from the spool."""
        start = time.perf_counter()
        batch = [item for item in (self.decode(key) for key in keys) if item is not None]
        if not batch:
            return
        explanation = self.model.explain_batch(
            [item.prepared for item in batch], self.cam.target_class, self.cam.method, **self.cam.options
        )
        labels = self.model.decide(explanation.probs)
        point = self.model.operating_point
        where = f"{point.source} ({point.method} on {point.chosen_on})"
        for item, probs, label, cam_map in zip(
            batch, explanation.probs, labels, explanation.maps, strict=True
        ):
            finding = Finding(
                float(probs[point.positive_class]), self.model.class_names[int(label)], point.threshold, where
            )
            overlay = caption(
                overlay_cam(item.prepared.original, cam_map, self.cam.alpha, self.cam.colormap), OVERLAY_LABEL
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING, category=UserWarning)
                results = [
                    self.builder.structured_report(item.header, finding),
                    self.builder.overlay_capture(item.header, overlay),
                ]
            for result in results:
                self.outbox.write(result.SOPInstanceUID, lambda handle, ds=result: ds.save_as(handle))
            self.incoming.remove(item.key)
            self.processed += 1
            log.info(
                "Result for %s: P(%s)=%.4f -> %s (threshold %.4f)",
                item.key,
                self.model.positive_name,
                finding.probability,
                finding.decision,
                finding.threshold,
            )
        self.on_result()
        log.info("Processed %d instance(s) in %.2f s", len(batch), time.perf_counter() - start)

    def decode(self, key: str) -> Received | None:
        """The spooled file through the model's preprocessor; an unreadable one goes to failed/, logged."""
        path = self.incoming.file(key)
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            prepared = self.model.prepare(self.model.preprocessor.read(path))
        except (ImageReadError, InvalidDicomError, ValueError) as error:
            reason = error.reason if isinstance(error, ImageReadError) else f"{type(error).__name__}: {error}"
            log.warning("Refused %s after receipt (kept in failed/): %s", key, reason)
            self.incoming.move(key, self.failed)
            return None
        return Received(key, header, prepared)
