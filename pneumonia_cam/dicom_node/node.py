"""The DICOM node: a C-STORE SCP that spools what it accepts, a worker, and a sender, built from one config.

node = DicomNode.from_config(cfg)      # cfg: configs/dicom_node.yaml; the model via load_model(cfg)
node.start(); ...; node.stop()

A C-STORE is answered success only once the instance is fsynced in the spool; refused instances get a named
failure status with an Error Comment, refused callers are rejected at association, and transfer syntaxes
with no installed decoder are refused per presentation context. Logs name instances by SOP Instance UID and
callers by AE title, never by patient name or ID.
"""

import logging
from collections.abc import Callable

from omegaconf import DictConfig
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pneumonia_cam.dicom_node.acceptance import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_UNREADABLE,
    AcceptPolicy,
    Refusal,
    decodable_syntaxes,
)
from pneumonia_cam.dicom_node.results import ModelIdentity, ResultBuilder
from pneumonia_cam.dicom_node.sender import CStoreDestination, Destination, Sender, StowDestination
from pneumonia_cam.dicom_node.spool import DurableFolder
from pneumonia_cam.dicom_node.worker import CamStyle, Worker
from pneumonia_cam.inference.backends import load_model
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.inference.outputs import cam_arguments

log = logging.getLogger(__name__)

# why the node refuses a presentation context (the A-ASSOCIATE-AC result codes, PS3.8 9.3.3.2)
CONTEXT_REFUSALS = {
    0x03: "SOP class not offered by this node",
    0x04: "none of its transfer syntaxes ({proposed}) has an installed decoder",
}


class StoreSCP:
    """The receiving side: association checks, the acceptance policy, the durable write, the answer."""

    def __init__(
        self,
        ae_title: str,
        allowed_callers: list[str],
        policy: AcceptPolicy,
        incoming: DurableFolder,
        on_received: Callable[[], None],
    ) -> None:
        if not allowed_callers:
            raise ValueError("scp.allowed_calling_ae_titles is empty: list the AE titles that may send")
        self.ae = AE(ae_title=ae_title)
        self.ae.require_calling_aet = list(allowed_callers)
        self.ae.maximum_associations = 16
        syntaxes = decodable_syntaxes()
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        self.ae.add_supported_context(Verification)
        self.allowed = set(allowed_callers)
        self.policy = policy
        self.incoming = incoming
        self.on_received = on_received
        self.server: ThreadedAssociationServer | None = None

    def start(self, host: str, port: int) -> None:
        """Listen (non-blocking) on host:port."""
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
        ]
        self.server = self.ae.start_server((host, int(port)), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        """Stop listening; associations in progress are closed."""
        if self.server is not None:
            self.server.shutdown()

    def handle_requested(self, event: evt.Event) -> None:
        """Name the reason when a caller outside the allow-list is about to be rejected."""
        calling = event.assoc.requestor.primitive.calling_ae_title
        if calling not in self.allowed:
            log.warning("Association from AE %r refused: calling AE title not in the allow-list", calling)

    def handle_accepted(self, event: evt.Event) -> None:
        """Log each presentation context the node refused and why (SOP class or transfer syntax)."""
        for context in event.assoc.rejected_contexts:
            proposed = ", ".join(UID(uid).name for uid in context.transfer_syntax)
            reason = CONTEXT_REFUSALS.get(context.result, f"result {context.result}").format(
                proposed=proposed
            )
            log.warning(
                "Presentation context %s from AE %r refused: %s",
                UID(context.abstract_syntax).name,
                event.assoc.requestor.ae_title,
                reason,
            )

    def handle_store(self, event: evt.Event) -> Dataset | int:
        """Check, spool durably, then answer: success only once the instance is safe on disk."""
        calling = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
        except (ValueError, EOFError, KeyError, TypeError) as error:
            return answer(
                Refusal(STATUS_UNREADABLE, f"dataset cannot be parsed ({type(error).__name__})"), calling
            )
        uid = UID(str(dataset.get("SOPInstanceUID", "")))
        if not uid.is_valid:
            return answer(Refusal(STATUS_UNREADABLE, "SOP Instance UID missing or not a valid UID"), calling)
        refusal = self.policy.check(dataset)
        if refusal is not None:
            return answer(refusal, calling, uid)
        try:
            self.incoming.write(uid, lambda handle: handle.write(event.encoded_dataset()))
        except OSError as error:
            return answer(
                Refusal(STATUS_OUT_OF_RESOURCES, f"spool write failed ({error.strerror})"), calling, uid
            )
        log.info("Received %s from AE %r (spooled)", uid, calling)
        self.on_received()
        return 0x0000


def answer(refusal: Refusal, calling: str, uid: str = "unknown instance") -> Dataset:
    """The failure status with the reason as Error Comment, logged with the instance's UID (never a name)."""
    log.warning("Refused %s from AE %r: %s (status 0x%04X)", uid, calling, refusal.reason, refusal.status)
    status = Dataset()
    status.Status = refusal.status
    status.ErrorComment = refusal.reason[:64]
    return status


def destination_from_config(cfg: DictConfig) -> Destination:
    """C-STORE to a DICOM AE, or STOW-RS to a DICOMweb server (the `destination` config group)."""
    if cfg.kind == "cstore":
        return CStoreDestination(cfg.ae_title, cfg.host, cfg.port, cfg.called_ae_title, cfg.timeout_s)
    if cfg.kind == "dicomweb":
        return StowDestination(cfg.url, cfg.timeout_s)
    raise ValueError(f"destination.kind must be cstore or dicomweb, got {cfg.kind!r}")


class DicomNode:
    """SCP, worker and sender around one InferenceModel, sharing the spool folders."""

    def __init__(self, cfg: DictConfig, model: InferenceModel) -> None:
        self.cfg = cfg
        self.model = model
        spool = cfg.spool_dir
        self.incoming = DurableFolder(f"{spool}/incoming")
        self.outbox = DurableFolder(f"{spool}/outbox")
        self.failed = DurableFolder(f"{spool}/failed")
        accept = cfg.accept
        policy = AcceptPolicy(
            list(accept.sop_classes),
            list(accept.modalities),
            list(accept.views),
            list(accept.body_parts),
            bool(accept.missing_view),
        )
        identity = ModelIdentity(
            name=f"{cfg.results.model_name} {model.info.backbone}",
            checkpoint_sha256=model.info.checkpoint_sha256,
            tta_views=model.tta["views"],
            tta_merge=model.tta["merge"],
        )
        builder = ResultBuilder(
            identity,
            cfg.results.uid_prefix,
            cfg.results.manufacturer,
            int(cfg.results.sr_series_number),
            int(cfg.results.overlay_series_number),
        )
        cam = cam_arguments(cfg.cam)
        style = CamStyle(
            cam["cam_method"], cam["cam_target"], cam["cam_options"], cfg.cam.alpha, cfg.cam.colormap
        )
        sending = cfg.destination
        self.sender = Sender(
            self.outbox,
            destination_from_config(sending),
            sending.batch_size,
            sending.backoff_s,
            sending.max_backoff_s,
        )
        self.worker = Worker(
            model,
            builder,
            style,
            self.incoming,
            self.outbox,
            self.failed,
            cfg.worker.batch_size,
            self.sender.wake.set,
        )
        self.scp = StoreSCP(
            cfg.scp.ae_title,
            list(cfg.scp.allowed_calling_ae_titles),
            policy,
            self.incoming,
            self.worker.wake.set,
        )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "DicomNode":
        """The model loaded as the server loads it (`load_model`: `InferenceModel.from_config`), in a node."""
        model = load_model(cfg)
        model.to(cfg.get("device", "cpu"))
        model.check_cam(cfg.cam.method, cfg.cam.target_layer)
        return cls(cfg, model)

    def start(self) -> None:
        """Sender and worker first (they finish what an earlier run left), then the listening SCP."""
        log.info(
            "Spool: %d instance(s) to process, %d result(s) to send, from an earlier run",
            len(self.incoming),
            len(self.outbox),
        )
        self.sender.start()
        self.worker.start()
        self.scp.start(self.cfg.scp.host, self.cfg.scp.port)
        log.info(
            "DICOM node %s listening on %s:%s (callers %s); results to %s",
            self.cfg.scp.ae_title,
            self.cfg.scp.host,
            self.cfg.scp.port,
            list(self.cfg.scp.allowed_calling_ae_titles),
            self.sender.destination.describe(),
        )

    def stop(self) -> None:
        """Stop receiving, then the worker and the sender; spool and outbox keep what is unfinished."""
        self.scp.stop()
        self.worker.stop()
        self.sender.stop()
