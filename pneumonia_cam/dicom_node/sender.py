"""Results out: the outbox goes to the destination (C-STORE or STOW-RS), emptied only on acknowledgement.

A destination that is down, refuses the association or answers a failure status keeps the results in the
outbox; the sender retries with exponential backoff (capped) until they are acknowledged, across restarts.
"""

import logging
from collections.abc import Sequence
from typing import Protocol

import pydicom
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from pneumonia_cam.dicom_node.spool import BackgroundLoop, DurableFolder

log = logging.getLogger(__name__)

RESULT_CLASSES = (ComprehensiveSRStorage, SecondaryCaptureImageStorage)


class DeliveryError(Exception):
    """The destination did not acknowledge a batch; nothing of it is taken out of the outbox."""


class Destination(Protocol):
    """Where results go: stores datasets, raises DeliveryError unless every one was acknowledged."""

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Send `datasets`; return only when the destination acknowledged each of them."""

    def describe(self) -> str:
        """Where results go, for the log."""


class CStoreDestination:
    """A DICOM AE (the PACS) reached with C-STORE, one association per batch."""

    def __init__(self, ae_title: str, host: str, port: int, called_ae_title: str, timeout_s: float) -> None:
        self.host, self.port, self.called = host, int(port), called_ae_title
        self.ae = AE(ae_title=ae_title)
        for sop_class in RESULT_CLASSES:
            self.ae.add_requested_context(sop_class)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s

    def describe(self) -> str:
        """AE title, host and port."""
        return f"{self.called}@{self.host}:{self.port} (C-STORE)"

    def store(self, datasets: Sequence[Dataset]) -> None:
        """C-STORE each dataset; the first failure ends the association and the batch."""
        assoc = self.ae.associate(self.host, self.port, ae_title=self.called)
        if not assoc.is_established:
            raise DeliveryError(f"no association with {self.called}@{self.host}:{self.port}")
        try:
            for dataset in datasets:
                status = assoc.send_c_store(dataset)
                code = int(status.get("Status", -1)) if status else -1
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise DeliveryError(
                        f"{self.called} answered status 0x{code:04X}" if code >= 0 else "no answer"
                    )
        finally:
            assoc.release()


class StowDestination:
    """A DICOMweb server (e.g. Orthanc's plugin) reached with STOW-RS."""

    def __init__(self, url: str, timeout_s: float) -> None:
        from dicomweb_client.api import DICOMwebClient  # deferred: only DICOMweb mode needs it

        self.client = DICOMwebClient(url=url, timeout=timeout_s)
        self.url = url

    def describe(self) -> str:
        """The DICOMweb root."""
        return f"{self.url} (STOW-RS)"

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS all datasets in one request; any failed SOP instance fails the batch."""
        import requests

        try:
            answer = self.client.store_instances(list(datasets))
        except (requests.RequestException, OSError) as error:
            raise DeliveryError(f"STOW-RS to {self.url} failed ({type(error).__name__})") from error
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise DeliveryError(f"STOW-RS to {self.url}: {len(failed)} instance(s) failed")


class Sender(BackgroundLoop):
    """A thread that empties the outbox into a destination, with backoff while the destination is down."""

    thread_name = "dicom-node-sender"

    def __init__(
        self,
        outbox: DurableFolder,
        destination: Destination,
        batch_size: int,
        backoff_s: float,
        max_backoff_s: float,
    ) -> None:
        self.outbox = outbox
        self.destination = destination
        self.batch_size = int(batch_size)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.sent = 0
        super().__init__()

    def run(self) -> None:
        """Send batches while there are results; wait for a wake-up, or back off after a failure."""
        delay = self.backoff_s
        while not self.stopping.is_set():
            keys = self.outbox.pending()[: self.batch_size]
            if not keys:
                self.wake.wait()
                self.wake.clear()
                continue
            try:
                self.send(keys)
            except DeliveryError as error:
                log.warning(
                    "Results not delivered (%s); %d waiting, retry in %.1f s", error, len(self.outbox), delay
                )
                self.stopping.wait(delay)
                delay = min(delay * 2.0, self.max_backoff_s)
                continue
            delay = self.backoff_s

    def send(self, keys: Sequence[str]) -> None:
        """Send one batch; each result leaves the outbox only once the batch was acknowledged."""
        datasets = [pydicom.dcmread(self.outbox.file(key)) for key in keys]
        self.destination.store(datasets)
        for key in keys:
            self.outbox.remove(key)
        self.sent += len(keys)
        log.info("Delivered %d result(s) (%d in all, %d waiting)", len(keys), self.sent, len(self.outbox))
