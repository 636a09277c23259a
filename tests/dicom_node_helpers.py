"""Helpers for the DICOM node tests and benchmark: real sample instances, a C-STORE client, the node."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "dicom_samples"
PA_SAMPLE = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
AP_SAMPLE = SAMPLES / "c64d5667-a776-4f95-9e21-bfabafb07740.dcm"
MONOCHROME1_SAMPLE = SAMPLES / "Fake_MONOHR1.dcm"
NODE_AET = "PNEUMOCAM"
PACS_AET = "ORTHANC"
READY_TIMEOUT_S = 120.0


def require_samples() -> None:
    """Skip unless ../shared/data/dicom_samples holds the real radiographs."""
    if not PA_SAMPLE.exists() or not AP_SAMPLE.exists():
        pytest.skip(f"real DICOM samples not found at {SAMPLES}")


def variant(path: Path, index: int, **changes: object) -> Dataset:
    """A real sample as a new instance (own study, series and SOP UIDs from `index`), with `changes` set."""
    dataset = pydicom.dcmread(path)
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(dataset, attribute, generate_uid(entropy_srcs=[str(path.name), str(index), attribute]))
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    if "SOPClassUID" in changes:
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    return dataset


def store(
    port: int,
    datasets: Sequence[Dataset],
    calling: str = PACS_AET,
    on_stored: Callable[[Dataset, Dataset], None] | None = None,
) -> list[Dataset]:
    """C-STORE `datasets` to the node in one association; the response statuses, in order.

    `on_stored(dataset, status)` runs as each answer arrives (the benchmark's receipt time)."""
    ae = AE(ae_title=calling)
    for sop_class, syntax in {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in datasets}:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        raise ConnectionError(f"no association with the node on port {port}")
    answers = []
    try:
        for dataset in datasets:
            answers.append(assoc.send_c_store(dataset))
            if on_stored is not None:
                on_stored(dataset, answers[-1])
    finally:
        assoc.release()
    return answers


def echo(port: int) -> bool:
    """Whether the node answers C-ECHO."""
    ae = AE(ae_title=PACS_AET)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


class NodeProcess:
    """`python src/dicom_node.py` with overrides, output in a log file; stopped (or killed) by the test."""

    def __init__(self, workdir: Path, port: int, overrides: Sequence[str]) -> None:
        self.workdir, self.port = Path(workdir), port
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.overrides = [
            f"scp.port={port}",
            f"spool_dir={self.workdir / 'spool'}",
            f"hydra.run.dir={self.workdir / 'run'}",
            "extras.print_config=false",
            *overrides,
        ]
        self.log_path = self.workdir / "node.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "NodeProcess":
        """Launch and wait until it answers C-ECHO."""
        env = {
            **os.environ,
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "WANDB_MODE": "offline",
            "HYDRA_FULL_ERROR": "1",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "src" / "dicom_node.py"), *self.overrides],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if echo(self.port):
                return self
            time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"node not answering C-ECHO after {READY_TIMEOUT_S} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM (finishes the batch in hand), then kill after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: what a crash or the OOM killer does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        """Everything the node wrote (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def spooled(self, folder: str) -> list[Path]:
        """The files waiting in spool/<folder> (incoming, outbox, failed)."""
        return sorted((self.workdir / "spool" / folder).glob("*.dcm"))
