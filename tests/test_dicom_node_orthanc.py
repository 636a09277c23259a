"""The DICOM node against a real PACS: Debian's Orthanc on 127.0.0.1 with a temporary config and storage.

End to end (Orthanc sends, results come back into the same study, values equal to the Python API's, valid
DICOM, no patient identity in the logs), a node killed mid-work, a PACS that is down, DICOMweb (STOW-RS)
results, and the bounded load test (200 instances, 4 associations) through benchmarks/dicom_node.py.
"""

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from dicom_node_helpers import (
    AP_SAMPLE,
    NODE_AET,
    PA_SAMPLE,
    ROOT,
    NodeProcess,
    require_samples,
    store,
    variant,
)
from helpers import softened_copy
from pydicom import Dataset

from pneumonia_cam.dicom_node.orthanc import Orthanc, free_port, orthanc_available
from pneumonia_cam.dicom_node.results import OVERLAY_LABEL
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.utils.run_config import checkpoint_sha256

pytestmark = [pytest.mark.slow, pytest.mark.real_data]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULT_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def softened(smoke_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke model with probabilities off 0 and 1, so equality with the API is a real check."""
    return softened_copy(smoke_checkpoint, tmp_path_factory.mktemp("dicom_node_pacs") / "softened.ckpt")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """A private Orthanc that knows the node as modality `node`; stopped after the test."""
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    require_samples()
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "pacs", modalities={"node": (NODE_AET, "127.0.0.1", node_port)})
    orthanc.node_port = node_port
    with orthanc:
        yield orthanc


@pytest.fixture
def node(pacs: Orthanc, softened: Path, tmp_path: Path) -> Iterator[NodeProcess]:
    """`src/dicom_node.py` sending its results to the Orthanc above; stopped after the test."""
    process = NodeProcess(
        tmp_path / "node", pacs.node_port, [f"ckpt_path={softened}", f"destination.port={pacs.dicom_port}"]
    )
    yield process.start()
    process.stop()


def wait_until(condition, timeout_s: float = RESULT_TIMEOUT_S) -> bool:
    """Poll until `condition()` holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return condition()


def stored_results(pacs: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    """The node's SRs and overlays in a study, by modality (SR | OT)."""
    out: dict[str, list[Dataset]] = {"SR": [], "OT": []}
    for instance in pacs.find_instances(StudyInstanceUID=study_uid):
        dataset = pydicom.dcmread(BytesIO(pacs.instance_file(instance["ID"])))
        if dataset.get("Manufacturer") == "pneumonia-cam":
            out[dataset.Modality].append(dataset)
    return out


def content(sr: Dataset) -> dict[str, Dataset]:
    """The measurement group's items by concept code value (NUM, CODE, IMAGE, TEXT)."""
    group = sr.ContentSequence[-1].ContentSequence[0]
    items: dict[str, Dataset] = {}
    for item in group.ContentSequence:
        items.setdefault(item.ConceptNameCodeSequence[0].CodeValue, item)
    return items


def dciodvfy_errors(data: bytes, tmp_path: Path, name: str) -> set[str]:
    """dciodvfy's Error lines for a file (Debian's dicom3tools)."""
    path = tmp_path / name
    path.write_bytes(data)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return {line.strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}


def test_end_to_end_through_orthanc(pacs, node, softened, tmp_path):
    """Orthanc sends real PA and AP radiographs; an SR and an overlay come back into each study, with the
    API's P(pneumonia) within 1e-6, its decision, threshold and model, referencing the source; both pass
    dciodvfy (no error the source does not have); a resend adds nothing; no patient name or ID in a log."""
    model = InferenceModel.from_checkpoint(softened)
    sources = {path: pydicom.dcmread(path) for path in (PA_SAMPLE, AP_SAMPLE)}
    ids = [pacs.upload(path.read_bytes())["ID"] for path in sources]
    job = pacs.send_to_modality("node", ids)
    assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 2

    for path, source in sources.items():
        assert wait_until(
            lambda s=source: all(len(v) == 1 for v in stored_results(pacs, s.StudyInstanceUID).values())
        )
        results = stored_results(pacs, source.StudyInstanceUID)
        (sr,), (overlay,) = results["SR"], results["OT"]
        items = content(sr)
        probs = model.predict_proba(model.prepare(path).tensor[None])
        expected = float(probs[0, model.operating_point.positive_class])
        assert 0.01 < expected < 0.99  # the softened model: a probability worth comparing
        assert float(items["P-PNEUMONIA"].MeasuredValueSequence[0].FloatingPointValue) == pytest.approx(
            expected, abs=1e-6
        )
        decision = model.class_names[int(model.decide(probs)[0])]
        assert items["DECISION"].ConceptCodeSequence[0].CodeValue == decision
        threshold = items["THRESHOLD"].MeasuredValueSequence[0].FloatingPointValue
        assert threshold == pytest.approx(model.operating_point.threshold)
        texts = [
            i.TextValue
            for i in sr.ContentSequence[-1].ContentSequence[0].ContentSequence
            if i.ValueType == "TEXT"
        ]
        assert checkpoint_sha256(softened) in texts
        assert f"threshold chosen: {model.operating_point.source}" in " ".join(texts)
        assert "tta views: identity" in texts
        assert items["121112"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sr.StudyInstanceUID == overlay.StudyInstanceUID == source.StudyInstanceUID
        assert len({sr.SeriesInstanceUID, overlay.SeriesInstanceUID, source.SeriesInstanceUID}) == 3
        assert overlay.SeriesDescription == OVERLAY_LABEL and "not a diagnosis" in overlay.ImageComments
        assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (overlay.Rows, overlay.Columns, overlay.SamplesPerPixel) == (source.Rows, source.Columns, 3)
        assert hd.sr.ComprehensiveSR.from_dataset(sr).SOPInstanceUID == sr.SOPInstanceUID
        if shutil.which("dciodvfy"):
            inherited = dciodvfy_errors(path.read_bytes(), tmp_path, "source.dcm")
            for name, result in (("sr.dcm", sr), ("overlay.dcm", overlay)):
                buffer = BytesIO()
                result.save_as(buffer)
                assert dciodvfy_errors(buffer.getvalue(), tmp_path, name) <= inherited, name

    count = pacs.count_instances()
    pacs.send_to_modality("node", ids)  # a resend: the same result UIDs, so nothing new in the PACS
    assert wait_until(lambda: node.log().count("Result for") == 4)
    time.sleep(2)
    assert pacs.count_instances() == count == 6

    logs = node.log() + "".join(p.read_text(errors="replace") for p in (node.workdir / "run").rglob("*.log"))
    assert "Result for" in logs
    for source in sources.values():
        for identity in (str(source.PatientName), str(source.PatientID)):
            assert identity not in logs


def test_killed_node_finishes_its_spool_once(pacs, node, softened):
    """SIGKILL right after 16 C-STORE successes (spool not empty), restart: all 32 results, each once."""
    datasets = [variant((PA_SAMPLE, AP_SAMPLE)[i % 2], 1000 + i) for i in range(16)]
    assert [a.Status for a in store(node.port, datasets)] == [0] * 16
    node.kill()
    left = len(node.spooled("incoming"))
    assert left > 0, "the node finished before it was killed: the test proves nothing"
    node.start()
    assert wait_until(
        lambda: pacs.count_instances() == 32 and not node.spooled("incoming") and not node.spooled("outbox")
    )
    time.sleep(2)
    assert pacs.count_instances() == 32
    sources = {d.SOPInstanceUID for d in datasets}
    referenced = []
    for dataset in datasets:
        results = stored_results(pacs, dataset.StudyInstanceUID)
        referenced += [o.SourceImageSequence[0].ReferencedSOPInstanceUID for o in results["OT"]]
        assert len(results["SR"]) == 1
    assert sorted(referenced) == sorted(sources)
    assert "from an earlier run" in node.log()


def test_results_wait_for_a_stopped_pacs(pacs, node):
    """Orthanc down while 6 instances are processed: 12 results wait in the outbox, retried with backoff, and
    arrive once Orthanc is back, each exactly once."""
    pacs.stop()
    datasets = [variant(PA_SAMPLE, 2000 + i) for i in range(6)]
    assert [a.Status for a in store(node.port, datasets)] == [0] * 6
    assert wait_until(lambda: len(node.spooled("outbox")) == 12 and "Results not delivered" in node.log())
    pacs.start()
    assert wait_until(lambda: pacs.count_instances() == 12 and not node.spooled("outbox"), timeout_s=180)
    time.sleep(2)
    assert pacs.count_instances() == 12
    for dataset in datasets:
        results = stored_results(pacs, dataset.StudyInstanceUID)
        assert (len(results["SR"]), len(results["OT"])) == (1, 1)


def test_dicomweb_results_by_stow(pacs, softened, tmp_path):
    """destination=dicomweb: the results reach Orthanc's DICOMweb plugin by STOW-RS, in the source's study."""
    plugins = pacs.version()
    if "dicom-web" not in plugins:
        pytest.skip(
            f"Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb): {plugins}"
        )
    overrides = [
        f"ckpt_path={softened}",
        "dicom_node/destination@destination=dicomweb",
        f"destination.url={pacs.url}/dicom-web",
    ]
    process = NodeProcess(tmp_path / "stow_node", pacs.node_port, overrides).start()
    try:
        dataset = variant(AP_SAMPLE, 3000)
        assert store(process.port, [dataset])[0].Status == 0
        assert wait_until(
            lambda: all(len(v) == 1 for v in stored_results(pacs, dataset.StudyInstanceUID).values())
        )
        assert "(STOW-RS)" in process.log()
    finally:
        process.stop()


def test_load_200_instances_over_4_associations(softened, tmp_path):
    """benchmarks/dicom_node.py: 200 instances over 4 concurrent associations, 0 lost, 0 duplicated."""
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    require_samples()
    from dicom_node import run_load

    result = run_load(softened, tmp_path, count=200, associations=4, timeout_s=480)
    assert result["accepted"] == 200 and result["refused"] == 0
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert result["results_in_orthanc"] == 400
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"] <= result["latency_max_s"]
    assert result["throughput_instances_per_s"] > 0
