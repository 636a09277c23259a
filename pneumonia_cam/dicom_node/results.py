"""The node's answers as DICOM: a TID 1500 Measurement Report (SR) and a Secondary Capture of the CAM overlay.

Both go into the source's study, each kind in a series of its own, and reference the source SOP Instance.
Their UIDs derive from the source UIDs, the checkpoint hash and the kind only, so a resent instance gives
the same objects (a PACS keeps one instance per SOP Instance UID) and never a duplicate.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# codes of this project (a private coding scheme, "99" prefix per PS3.16 8.2) for what no standard code names
SCHEME = "99PNEUMOCAM"
PROBABILITY = hd.sr.CodedConcept("P-PNEUMONIA", SCHEME, "Model probability of pneumonia")
THRESHOLD = hd.sr.CodedConcept("THRESHOLD", SCHEME, "Decision threshold on the probability")
DECISION = hd.sr.CodedConcept("DECISION", SCHEME, "Model decision at the stored operating point")
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
CHEST_XRAY = hd.sr.CodedConcept("168731009", "SCT", "Chest X-ray")
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
OVERLAY_LABEL = "CAM heat map of model attention - not a diagnosis"


@dataclass(frozen=True)
class Finding:
    """What the model says about one image: P(positive), the decided class, the operating point behind it."""

    probability: float
    decision: str
    threshold: float
    threshold_source: str  # where the threshold was chosen (the operating point's source and method)


@dataclass(frozen=True)
class ModelIdentity:
    """The model named in every result: backbone, checkpoint hash, TTA views."""

    name: str
    checkpoint_sha256: str
    tta_views: Sequence[str]
    tta_merge: str


class ResultBuilder:
    """Builds the SR and the overlay SC for a source instance, with UIDs that depend on nothing else."""

    def __init__(
        self, model: ModelIdentity, uid_prefix: str, manufacturer: str, sr_series: int, overlay_series: int
    ) -> None:
        self.model = model
        self.uid_prefix = uid_prefix
        self.manufacturer = manufacturer
        self.sr_series = sr_series
        self.overlay_series = overlay_series

    def uid(self, source_uid: str, kind: str) -> str:
        """A UID from the source UID, the checkpoint and the kind of result: the same inputs, the same UID."""
        return generate_uid(
            self.uid_prefix, entropy_srcs=[str(source_uid), self.model.checkpoint_sha256, kind]
        )

    def structured_report(self, source: Dataset, finding: Finding) -> hd.sr.ComprehensiveSR:
        """P(pneumonia), decision, threshold and where it was chosen, and the model; references the source."""
        algorithm = hd.sr.AlgorithmIdentification(
            name=self.model.name,
            version=self.model.checkpoint_sha256[:64],
            parameters=[
                f"threshold={finding.threshold:.6g}",
                f"threshold chosen: {finding.threshold_source}"[:64],
                f"tta views: {','.join(self.model.tta_views)}"[:64],
                f"tta merge: {self.model.tta_merge}",
            ],
        )
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=self.uid(source.SOPInstanceUID, "tracking"), identifier="pneumonia classification"
            ),
            finding_type=PNEUMONIA,
            algorithm_id=algorithm,
            measurements=[
                hd.sr.Measurement(PROBABILITY, float(finding.probability), UNITLESS),
                hd.sr.Measurement(THRESHOLD, float(finding.threshold), UNITLESS),
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    DECISION,
                    hd.sr.CodedConcept(finding.decision, SCHEME, f"Model decision {finding.decision}"),
                )
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        )
        device = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=self.uid(self.model.checkpoint_sha256, "device"),
                name=self.model.name[:64],
                manufacturer_name=self.manufacturer,
                model_name=self.model.name[:64],
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=device),
            procedure_reported=CHEST_XRAY,
            imaging_measurements=[group],
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=[source],
            content=report[0],
            series_instance_uid=self.uid(source.SeriesInstanceUID, "sr-series"),
            series_number=self.sr_series,
            sop_instance_uid=self.uid(source.SOPInstanceUID, "sr"),
            instance_number=int(source.get("InstanceNumber", 1) or 1),
            manufacturer=self.manufacturer,
            is_complete=True,
            series_description=f"AI result: {self.model.name} (not a diagnosis)",
        )
        return sr

    def overlay_capture(self, source: Dataset, overlay_bgr: np.ndarray) -> hd.sc.SCImage:
        """The CAM overlay (BGR uint8, source size) as an RGB Secondary Capture, labelled as attention."""
        rgb = cv2.cvtColor(overlay_bgr, cv2.COLOR_BGR2RGB)
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=self.uid(source.SeriesInstanceUID, "overlay-series"),
            series_number=self.overlay_series,
            sop_instance_uid=self.uid(source.SOPInstanceUID, "overlay"),
            instance_number=int(source.get("InstanceNumber", 1) or 1),
            manufacturer=self.manufacturer,
            patient_orientation=_orientation(source),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=OVERLAY_LABEL,
        )
        capture.ImageComments = f"{OVERLAY_LABEL}; model {self.model.name}"[:10240]
        if source.get("BodyPartExamined"):
            capture.BodyPartExamined = source.BodyPartExamined
        capture.BurnedInAnnotation = "NO"  # the burned-in caption carries no patient identity
        capture.ImageType = ["DERIVED", "SECONDARY"]
        capture.DerivationDescription = f"Class activation map of {self.model.name} over the source image"
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        capture.SourceImageSequence = [reference]
        return capture


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's Patient Orientation when it has two values, else a frontal chest's default (L, F)."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    return "L", "F"
