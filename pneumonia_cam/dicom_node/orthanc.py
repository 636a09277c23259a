"""A private Orthanc (Debian's `orthanc` package) on 127.0.0.1 and the few REST calls the node's checks use.

with Orthanc(workdir, modalities={"node": ("PNEUMOCAM", "127.0.0.1", 11112)}) as pacs:
    pacs.upload(data); pacs.send_to_modality("node", [orthanc_id]); pacs.study_instances(study_uid)

Its own config and storage folder, HTTP and DICOM ports free on loopback, remote access off; stopping it
(terminate, then kill) keeps the storage, so a restart finds what it stored.
"""

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

EXECUTABLE = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 60.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_available() -> str | None:
    """None when Debian's Orthanc is installed, else why not (for a skip reason)."""
    if shutil.which(EXECUTABLE) is None:
        return f"{EXECUTABLE} is not on PATH (apt-get install orthanc)"
    return None


class Orthanc:
    """One Orthanc process with a temporary config; `modalities` maps a name to (AE title, host, port)."""

    def __init__(
        self,
        workdir: Path,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        ae_title: str = "ORTHANC",
        dicomweb: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.http_port, self.dicom_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pneumonia-cam test PACS",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
            "DicomScuTimeout": 30,
            "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb and DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.config_path = self.workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Self:
        """Launch and wait until /system answers (or raise with the log's tail)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [EXECUTABLE, str(self.config_path)], cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer /system in {START_TIMEOUT_S} s: {self.log_tail()}")

    def stop(self) -> None:
        """Terminate (then kill after 10 s); the storage folder stays."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of Orthanc's own log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def version(self) -> str:
        """Orthanc's version and plugins, as /system and /plugins report them."""
        system = requests.get(f"{self.url}/system", timeout=10).json()
        plugins = requests.get(f"{self.url}/plugins", timeout=10).json()
        return f"Orthanc {system['Version']} (plugins: {', '.join(plugins) or 'none'})"

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store a DICOM file; Orthanc's answer (ID, ParentStudy, Status)."""
        response = requests.post(f"{self.url}/instances", data=data, timeout=60)
        response.raise_for_status()
        return response.json()

    def send_to_modality(self, modality: str, orthanc_ids: list[str]) -> dict[str, Any]:
        """C-STORE resources to a configured modality, synchronously (Orthanc's /modalities/<name>/store)."""
        body = {"Resources": orthanc_ids, "Synchronous": True}
        response = requests.post(f"{self.url}/modalities/{modality}/store", json=body, timeout=300)
        response.raise_for_status()
        return response.json()

    def find_instances(self, **query: str) -> list[dict[str, Any]]:
        """Instances whose main DICOM tags match `query` (e.g. StudyInstanceUID=...), expanded."""
        body = {"Level": "Instance", "Query": query, "Expand": True}
        response = requests.post(f"{self.url}/tools/find", json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        response = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        response.raise_for_status()
        return response.content

    def count_instances(self) -> int:
        """How many instances Orthanc holds."""
        return int(requests.get(f"{self.url}/statistics", timeout=10).json()["CountInstances"])

    def changes(self, since: int, limit: int = 1000) -> dict[str, Any]:
        """Orthanc's change log after `since` (Changes, Last, Done)."""
        response = requests.get(f"{self.url}/changes", params={"since": since, "limit": limit}, timeout=10)
        response.raise_for_status()
        return response.json()
