"""The DICOM node without a PACS: what it accepts and refuses (status, reason, log), the spool, the sender's
backoff, and deterministic result UIDs. The node runs in-process on 127.0.0.1 with the smoke checkpoint."""

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
from dicom_node_helpers import (
    AP_SAMPLE,
    MONOCHROME1_SAMPLE,
    NODE_AET,
    PA_SAMPLE,
    require_samples,
    store,
    variant,
)
from helpers import compose_config, softened_copy
from hydra.core.global_hydra import GlobalHydra
from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, CTImageStorage

from pneumonia_cam.dicom_node.acceptance import (
    STATUS_BODY_PART,
    STATUS_MODALITY,
    STATUS_PIXELS,
    STATUS_SOP_CLASS,
    STATUS_VIEW,
)
from pneumonia_cam.dicom_node.node import DicomNode
from pneumonia_cam.dicom_node.orthanc import free_port
from pneumonia_cam.dicom_node.results import ModelIdentity, ResultBuilder
from pneumonia_cam.dicom_node.sender import DeliveryError, Sender
from pneumonia_cam.dicom_node.spool import DurableFolder

MPEG2 = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile: no decoder for it here (or anywhere in pydicom)


@pytest.fixture(scope="module")
def softened(smoke_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke model with probabilities off 0 and 1."""
    return softened_copy(smoke_checkpoint, tmp_path_factory.mktemp("dicom_node_ckpt") / "softened.ckpt")


@pytest.fixture
def node(softened: Path, tmp_path: Path) -> Iterator[DicomNode]:
    """The node in-process; its destination is a port nobody listens on, so results stay in the outbox."""
    require_samples()
    cfg = compose_config(
        "dicom_node.yaml",
        [
            f"ckpt_path={softened}",
            f"scp.port={free_port()}",
            f"destination.port={free_port()}",
            "destination.backoff_s=30",
            f"spool_dir={tmp_path / 'spool'}",
        ],
    )
    GlobalHydra.instance().clear()
    dicom_node = DicomNode.from_config(cfg)
    dicom_node.start()
    yield dicom_node
    dicom_node.stop()


def port_of(node: DicomNode) -> int:
    """The node's listening port."""
    return int(node.cfg.scp.port)


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    """Poll `condition` until it holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def grey_sr() -> Dataset:
    """A Basic Text SR instance: a non-image object a PACS may well route to any node."""
    dataset = variant(PA_SAMPLE, 99, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", Modality="SR")
    del dataset.PixelData
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


REFUSED = [
    (
        "CT",
        lambda: variant(PA_SAMPLE, 1, SOPClassUID=CTImageStorage, Modality="CT"),
        STATUS_SOP_CLASS,
        "SOP class",
    ),
    ("lateral", lambda: variant(PA_SAMPLE, 2, ViewPosition="LL"), STATUS_VIEW, "view position LL"),
    ("no view", lambda: variant(PA_SAMPLE, 3, ViewPosition=""), STATUS_VIEW, "no ViewPosition"),
    ("MR modality", lambda: variant(PA_SAMPLE, 4, Modality="MR"), STATUS_MODALITY, "modality MR"),
    ("knee", lambda: variant(PA_SAMPLE, 5, BodyPartExamined="KNEE"), STATUS_BODY_PART, "body part KNEE"),
    ("colour", lambda: variant(PA_SAMPLE, 6, SamplesPerPixel=3), STATUS_PIXELS, "colour image"),
    ("multi-frame", lambda: variant(PA_SAMPLE, 7, NumberOfFrames=2), STATUS_PIXELS, "multi-frame"),
    ("SR", grey_sr, STATUS_SOP_CLASS, "SOP class Basic Text SR"),
]


@pytest.mark.parametrize(("name", "make", "status", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_instances_get_their_status_and_reason(node, caplog, name, make, status, reason):
    """Each refused kind gets its 0xC0xx status, the reason as Error Comment and in the log; no spooling."""
    dataset = make()
    with caplog.at_level(logging.WARNING, logger="pneumonia_cam.dicom_node"):
        (answer,) = store(port_of(node), [dataset])
    assert answer.Status == status
    assert reason in answer.ErrorComment
    assert any(reason in r.getMessage() and dataset.SOPInstanceUID in r.getMessage() for r in caplog.records)
    assert len(node.incoming) == 0 and len(node.outbox) == 0


def test_frontal_radiographs_are_spooled_and_processed(node):
    """PA, AP and MONOCHROME1 CRs: 0x0000, then two results each in the outbox with the API's probability."""
    datasets = [variant(path, 10 + i) for i, path in enumerate((PA_SAMPLE, AP_SAMPLE, MONOCHROME1_SAMPLE))]
    answers = store(port_of(node), datasets)
    assert [a.Status for a in answers] == [0, 0, 0]
    assert wait_for(lambda: len(node.outbox) == 6 and len(node.incoming) == 0)
    results = [pydicom.dcmread(node.outbox.file(key)) for key in node.outbox.pending()]
    sources = {d.SOPInstanceUID for d in datasets}
    referenced = {r.SourceImageSequence[0].ReferencedSOPInstanceUID for r in results if r.Modality == "OT"}
    assert referenced == sources
    assert {r.StudyInstanceUID for r in results} == {d.StudyInstanceUID for d in datasets}
    by_source = {sr_source(r): sr_probability(r) for r in results if r.Modality == "SR"}
    paths = (PA_SAMPLE, AP_SAMPLE, MONOCHROME1_SAMPLE)
    expected = [api_probability(node, path) for path in paths]
    assert [by_source[d.SOPInstanceUID] for d in datasets] == pytest.approx(expected, abs=1e-6)
    # MONOCHROME1 holds the PA's stored values: the reader inverts them, so the model sees another image
    assert abs(expected[2] - expected[0]) > 1e-3


def api_probability(node: DicomNode, path: Path) -> float:
    """P(positive) of the Python API (the same InferenceModel) on the file."""
    model = node.model
    probs = model.predict_proba(model.prepare(path).tensor[None])
    return float(probs[0, model.operating_point.positive_class])


def sr_source(sr: Dataset) -> str:
    """The SOP Instance UID the SR's measurement group names as its source image."""
    group = sr.ContentSequence[-1].ContentSequence[0]
    (image,) = [item for item in group.ContentSequence if item.ValueType == "IMAGE"]
    return image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def sr_probability(sr: Dataset) -> float:
    """The P(pneumonia) NUM item of the node's SR."""
    group = sr.ContentSequence[-1].ContentSequence[0]
    items = [
        i
        for i in group.ContentSequence
        if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "P-PNEUMONIA"
    ]
    return float(items[0].MeasuredValueSequence[0].FloatingPointValue)


def test_unknown_caller_is_rejected_at_association(node, caplog):
    """A calling AE title outside the allow-list gets A-ASSOCIATE-RJ, with the reason in the node's log."""
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    with caplog.at_level(logging.WARNING, logger="pneumonia_cam.dicom_node"):
        assoc = ae.associate("127.0.0.1", port_of(node), ae_title=NODE_AET)
    assert assoc.is_rejected and not assoc.is_established
    assert any(
        "'INTRUDER' refused: calling AE title not in the allow-list" in r.getMessage() for r in caplog.records
    )


def test_undecodable_transfer_syntax_is_refused_per_context(node, caplog):
    """A context offering only MPEG2 is refused (result 0x04) and the log names the syntax; no crash."""
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(ComputedRadiographyImageStorage, [MPEG2])
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    with caplog.at_level(logging.WARNING, logger="pneumonia_cam.dicom_node"):
        assoc = ae.associate("127.0.0.1", port_of(node), ae_title=NODE_AET)
        assert assoc.is_established
        assoc.release()
    assert [cx.result for cx in assoc.rejected_contexts] == [0x04]
    assert [cx.transfer_syntax[0] for cx in assoc.accepted_contexts] == [ExplicitVRLittleEndian]
    assert any(
        "has an installed decoder" in r.getMessage() and "MPEG2" in r.getMessage() for r in caplog.records
    )


def test_unreadable_pixels_after_receipt_go_to_failed(node, caplog):
    """Pixels the reader cannot decode: 0x0000 (the header is fine), then moved to failed/ and logged."""
    dataset = variant(PA_SAMPLE, 20)
    dataset.PixelData = dataset.PixelData[:200]  # a truncated JPEG stream
    with caplog.at_level(logging.WARNING, logger="pneumonia_cam.dicom_node"):
        (answer,) = store(port_of(node), [dataset])
        assert answer.Status == 0
        assert wait_for(lambda: len(node.failed) == 1)
    assert node.failed.pending() == [dataset.SOPInstanceUID]
    assert any(
        "after receipt" in r.getMessage() and dataset.SOPInstanceUID in r.getMessage() for r in caplog.records
    )
    assert len(node.outbox) == 0


def test_durable_folder(tmp_path):
    """Writes land whole under their key, oldest first; a crash's partial file is dropped on reopen."""
    folder = DurableFolder(tmp_path / "box")
    folder.write("1.2.3", lambda handle: handle.write(b"first"))
    time.sleep(0.01)
    folder.write("1.2.4", lambda handle: handle.write(b"second"))
    folder.write("1.2.3", lambda handle: handle.write(b"again"))  # a resend replaces, never adds
    assert folder.pending() == ["1.2.4", "1.2.3"]
    assert folder.file("1.2.3").read_bytes() == b"again"
    (tmp_path / "box" / ".1.2.5.abc.part").write_bytes(b"half")
    reopened = DurableFolder(tmp_path / "box")
    assert not list((tmp_path / "box").glob("*.part")) and len(reopened) == 2
    other = DurableFolder(tmp_path / "other")
    reopened.move("1.2.4", other)
    assert reopened.pending() == ["1.2.3"] and other.pending() == ["1.2.4"]
    reopened.remove("1.2.3")
    assert len(reopened) == 0


class FlakyDestination:
    """Fails the first `failures` batches, then acknowledges; records when each attempt came."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.stored: list[str] = []
        self.done = threading.Event()

    def describe(self) -> str:
        return "flaky"

    def store(self, datasets: Sequence[Dataset]) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise DeliveryError("down")
        self.stored += [d.SOPInstanceUID for d in datasets]
        self.done.set()


def test_sender_retries_with_backoff_until_acknowledged(tmp_path):
    """3 failures, then success: waits of 0.1, 0.2, 0.4 s (doubling), each result delivered once."""
    require_samples()
    outbox = DurableFolder(tmp_path / "outbox")
    uids = [f"1.2.826.0.1.{i}" for i in range(3)]
    for uid in uids:
        dataset = variant(PA_SAMPLE, 0, SOPInstanceUID=uid)
        outbox.write(uid, lambda handle, ds=dataset: ds.save_as(handle))
    destination = FlakyDestination(failures=3)
    sender = Sender(outbox, destination, batch_size=16, backoff_s=0.1, max_backoff_s=1.0)
    sender.start()
    assert destination.done.wait(10)
    sender.stop()
    gaps = [b - a for a, b in zip(destination.attempts, destination.attempts[1:], strict=False)]
    assert [round(g, 1) for g in gaps] == [0.1, 0.2, 0.4]
    assert sorted(destination.stored) == sorted(uids) and len(outbox) == 0


def test_result_uids_are_deterministic():
    """Same source, checkpoint and kind: the same valid UID; any of the three changed: another UID."""

    def builder(sha: str) -> ResultBuilder:
        return ResultBuilder(
            ModelIdentity("m", sha, ["identity"], "probability"), "1.2.826.0.1.3680043.8.498.", "x", 1, 2
        )

    a, b = builder("a" * 64), builder("b" * 64)
    uid = a.uid("1.2.3.4", "sr")
    assert uid == builder("a" * 64).uid("1.2.3.4", "sr") and UID(uid).is_valid
    assert len({uid, a.uid("1.2.3.5", "sr"), a.uid("1.2.3.4", "overlay"), b.uid("1.2.3.4", "sr")}) == 4
