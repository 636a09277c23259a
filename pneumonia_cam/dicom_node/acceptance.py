"""What the node accepts: frontal chest CR/DX radiographs it can decode; everything else gets a named refusal.

Each refusal carries a C-STORE failure status (0xC0xx, "cannot understand" range) and a reason that goes into
the response's Error Comment and the log. Only header attributes are read; patient identity never is.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pneumonia_cam.data.dicom import DECODER_PACKAGES, has_decoder

# uncompressed syntaxes pydicom reads without a plugin; the compressed ones count only with a working decoder
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
RLE_LOSSLESS = UID("1.2.840.10008.1.2.5")

# C-STORE failure statuses, one per reason (0xC000-0xCFFF: "cannot understand"; PS3.4 B.2.3)
STATUS_SOP_CLASS = 0xC001
STATUS_MODALITY = 0xC002
STATUS_VIEW = 0xC003
STATUS_BODY_PART = 0xC004
STATUS_PIXELS = 0xC005
STATUS_UNREADABLE = 0xC006
STATUS_OUT_OF_RESOURCES = 0xA700  # the spool could not be written: the sender should retry later


@dataclass(frozen=True)
class Refusal:
    """Why an instance is not processed: the C-STORE status and the reason (log and Error Comment)."""

    status: int
    reason: str


@dataclass(frozen=True)
class AcceptPolicy:
    """Storage SOP classes, modalities, view positions and body parts the node processes."""

    sop_classes: Sequence[str]
    modalities: Sequence[str]
    views: Sequence[str]
    body_parts: Sequence[str]
    missing_view: bool = False  # process an instance without ViewPosition (its view cannot be checked)

    def check(self, dataset: Dataset) -> Refusal | None:
        """None for an instance to process, else the first named reason it is refused."""
        sop_class = UID(str(dataset.get("SOPClassUID", "")))
        if sop_class not in self.sop_classes:
            name = sop_class.name if sop_class.is_valid else repr(str(sop_class))
            return Refusal(
                STATUS_SOP_CLASS, f"SOP class {name} is not a chest radiograph class this node reads"
            )
        modality = str(dataset.get("Modality", "") or "").upper()
        if modality not in self.modalities:
            return Refusal(
                STATUS_MODALITY, f"modality {modality or 'missing'} is not one of {list(self.modalities)}"
            )
        view = str(dataset.get("ViewPosition", "") or "").strip().upper()
        if view and view not in self.views:
            return Refusal(STATUS_VIEW, f"view position {view} is not frontal ({list(self.views)})")
        if not view and not self.missing_view:
            return Refusal(STATUS_VIEW, "no ViewPosition: frontal cannot be told from lateral")
        body_part = str(dataset.get("BodyPartExamined", "") or "").strip().upper()
        if body_part and body_part not in self.body_parts:
            return Refusal(STATUS_BODY_PART, f"body part {body_part} is not one of {list(self.body_parts)}")
        return pixel_refusal(dataset)


def pixel_refusal(dataset: Dataset) -> Refusal | None:
    """Refuse what the reader does not turn into one grey radiograph: no pixels, colour, multi-frame."""
    if "PixelData" not in dataset:
        return Refusal(STATUS_PIXELS, "no pixel data")
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        return Refusal(
            STATUS_PIXELS, f"colour image (SamplesPerPixel {samples}): only grey radiographs are read"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        return Refusal(STATUS_PIXELS, f"multi-frame image ({frames} frames): one radiograph per instance")
    if not dataset.get("Rows") or not dataset.get("Columns"):
        return Refusal(STATUS_PIXELS, "no Rows/Columns")
    return None


def decodable_syntaxes() -> list[UID]:
    """The transfer syntaxes the node offers in its presentation contexts: those it can decode right now."""
    compressed = [UID(uid) for uid in (*DECODER_PACKAGES, RLE_LOSSLESS) if has_decoder(UID(uid))]
    return [*NATIVE_SYNTAXES, *compressed]
