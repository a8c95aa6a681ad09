"""The DICOM source of `triage listen`: a pynetdicom storage SCP feeding the job store.

- Accepts Computed Radiography and Digital X-Ray (for presentation) images — with ``--any-modality``
  also DX for processing — in every transfer syntax the runtime can decode here: the uncompressed ones
  and each compressed syntax for which pydicom has an installed decoder (JPEG baseline / extended /
  lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE with the runtime's decoders). pynetdicom's
  ``AllStoragePresentationContexts`` offers only uncompressed syntaxes, so each context is added with
  the full list. C-ECHO (verification) is answered too.
- Binds 127.0.0.1 unless told otherwise; only associations addressed to our AE title are accepted and,
  with ``--allow-ae``, only from those calling AE titles (others: A-ASSOCIATE-RJ "calling AE title not
  recognised").
- Each C-STORE is written as received (no transcoding) to ``OUT/spool/<Study>/<SOP>.dcm`` atomically
  and registered in the store *before* success is answered: an acknowledged image is never lost. When
  free space in OUT is below ``--min-free-mb`` the answer is 0xA700 "out of resources" and nothing is
  written; the sender keeps the image and retries later.
- A study is complete when none of its images arrived for the quiet period.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from pydicom import uid as uids
from pydicom.pixels.decoders.base import get_decoder
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from serving.config import ConfigError, ListenConfig, ServiceConfig
from serving.metrics import Metrics
from serving.store import Arrival, JobStore
from serving.tls import server_context
from triage.errors import TriageError
from triage.io.dicomfile import text_value
from triage.outputs.atomic import atomic_write_bytes
from triage.outputs.paths import study_dir, validated_uid

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
UNCOMPRESSED = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
)
RADIOGRAPHS = (uids.ComputedRadiographyImageStorage, uids.DigitalXRayImageStorageForPresentation)


def decodable_transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes plus every compressed one with an available pydicom decoder plugin."""
    found = [str(ts) for ts in UNCOMPRESSED]
    for ts in uids.AllTransferSyntaxes:
        ts = uids.UID(ts)
        if not ts.is_compressed or ts in UNCOMPRESSED:
            continue
        try:
            if get_decoder(ts).is_available:
                found.append(str(ts))
        except (ValueError, NotImplementedError):
            continue
    return found


class DicomSource:
    """The storage SCP; C-STOREs go to the spool and the store from pynetdicom's association threads."""

    name = "listen"

    def __init__(
        self, config: ListenConfig, service: ServiceConfig, store: JobStore, metrics: Metrics
    ) -> None:
        self.config = config
        self.service = service
        self.store = store
        self.metrics = metrics
        self.spool = service.out / "spool"
        self.transfer_syntaxes = decodable_transfer_syntaxes()
        self.ae = AE(ae_title=service.ae_title)
        classes = (
            [*RADIOGRAPHS, uids.DigitalXRayImageStorageForProcessing] if service.any_modality else RADIOGRAPHS
        )
        for sop_class in classes:
            self.ae.add_supported_context(sop_class, self.transfer_syntaxes)
        self.ae.add_supported_context(Verification)
        self.ae.require_called_aet = True
        if config.allow_ae:
            self.ae.require_calling_aet = list(config.allow_ae)
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 60
        self.ae.network_timeout = 60
        self._server: Any = None

    def start(self) -> None:
        self._recover_spool()
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            self._server = self.ae.start_server(
                (self.config.host, self.config.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=server_context(self.service.tls) if self.service.tls.enabled else None,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
                " (another DICOM node on that port? choose another --port)"
            ) from exc
        logger.info(
            "listening on %s:%d%s as %s (%d transfer syntaxes; calling AE titles: %s)",
            self.config.host,
            self.config.port,
            " (DICOM TLS)" if self.service.tls.enabled else "",
            self.service.ae_title,
            len(self.transfer_syntaxes),
            ",".join(self.config.allow_ae) or "any",
            extra={"event": "listen_started"},
        )

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        for assoc in list(server.active_associations):
            assoc.abort()  # an unanswered C-STORE is resent by the modality; answered ones are stored
        server.shutdown()

    def alive(self) -> bool:
        return self._server is not None and self._server.socket.fileno() != -1

    def drained(self) -> bool:
        return self._server is None or not self._server.active_associations

    def tick(self) -> int:
        return 0

    def hold(self, paths: list[str], last_arrival: float) -> bool:
        return False

    # --- handlers (association threads) -------------------------------------------------------------

    @staticmethod
    def _peer(event: Event) -> dict[str, Any]:
        requestor = event.assoc.requestor
        return {
            "calling_ae": str(requestor.ae_title).strip(),
            "peer": f"{requestor.address}:{requestor.port}",
        }

    def _on_accepted(self, event: Event) -> None:
        logger.info("association accepted", extra={"event": "association_accepted", **self._peer(event)})

    def _on_rejected(self, event: Event) -> None:
        self.metrics.rejected.labels(reason="association").inc()
        logger.warning(
            "association rejected (called or calling AE title not allowed)",
            extra={"event": "association_rejected", **self._peer(event)},
        )

    def _disk_low(self) -> bool:
        try:
            free = shutil.disk_usage(self.service.out).free
        except OSError:
            return True
        return free < self.service.min_free_mb * 1024 * 1024

    def _on_store(self, event: Event) -> int:
        if self._disk_low():
            self.metrics.rejected.labels(reason="disk_low").inc()
            logger.error(
                "C-STORE refused: free space in %s below %.0f MB (0xA700 out of resources)",
                self.service.out,
                self.service.min_free_mb,
                extra={"event": "store_refused", "reason": "disk_low", **self._peer(event)},
            )
            return STATUS_OUT_OF_RESOURCES
        try:
            ds = event.dataset
            study = validated_uid(text_value(ds, "StudyInstanceUID"), "StudyInstanceUID")
            sop = validated_uid(text_value(ds, "SOPInstanceUID"), "SOPInstanceUID")
        except TriageError as exc:
            self.metrics.rejected.labels(reason=exc.code.value).inc()
            logger.warning(
                "C-STORE refused: %s",
                exc.message,
                extra={"event": "store_refused", "reason": exc.code.value, **self._peer(event)},
            )
            return STATUS_CANNOT_UNDERSTAND
        except Exception as exc:
            self.metrics.rejected.labels(reason="decode_failed").inc()
            logger.warning(
                "C-STORE refused: the data set cannot be decoded (%s)",
                type(exc).__name__,
                extra={"event": "store_refused", "reason": "decode_failed", **self._peer(event)},
            )
            return STATUS_CANNOT_UNDERSTAND
        path = study_dir(self.spool, study) / f"{sop}.dcm"
        try:
            atomic_write_bytes(path, event.encoded_dataset())
            st = path.stat()
            self.store.register(Arrival(str(path), st.st_size, st.st_mtime_ns, time.time(), study, sop))
        except (TriageError, OSError) as exc:
            self.metrics.rejected.labels(reason="write_failed").inc()
            logger.error(
                "C-STORE refused: cannot store the image (%s)",
                exc,
                extra={"event": "store_refused", "reason": "write_failed", **self._peer(event)},
            )
            return STATUS_OUT_OF_RESOURCES
        self.metrics.received.labels(source=self.name).inc()
        logger.debug(
            "stored",
            extra={
                "event": "stored",
                "study_uid": study,
                "transfer_syntax": str(event.file_meta.TransferSyntaxUID),
                **self._peer(event),
            },
        )
        return STATUS_SUCCESS

    def _recover_spool(self) -> None:
        """Spool files written but not registered before a crash (their C-STORE was never answered, so
        the sender will also resend them; registering is idempotent)."""
        from serving.watch import recover_spool

        recover_spool(self.spool, self.store)
