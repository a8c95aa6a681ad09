"""The DICOMweb source of `triage poll URL`: for sites that cannot push, the service asks a DICOMweb server
(QIDO-RS) for CR / DX studies every ``--poll-interval`` seconds and retrieves (WADO-RS) the images it
has not taken in yet into ``OUT/spool/<study>/<series>/<sop>.dcm``, then registers them in the job store
exactly like images received by the listener: same quiet period, same study versions, same outputs.

Exactly once: an image is retrieved only if its (study, SOP) is not in the job store yet, and the store
is durable, so a restart does not retrieve or process anything again; an image written but not yet
registered when the process died is registered from the spool at start-up. Only radiograph instances
are retrieved (CR, DX for presentation; DX for processing with ``--any-modality``, by SOP Class UID),
so the service's own SEG / SC / SR stored back to the same server never become inputs.

Which studies: StudyDate from ``--since DATE`` (or today minus ``--lookback-days``) onwards, with a
modality in ``--modality`` (QIDO-RS ModalitiesInStudy). A study whose number of related instances has
not changed since the last poll is not asked about again.

Failures (server down, HTTP errors, expired token, a truncated or non-DICOM answer) are logged, kept as
the ``poll`` note that `triage jobs` shows, and retried: the search at the next poll, an instance with
back-off (``--retry-base`` … ``--retry-max``); the service keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom import uid as uids

from serving.config import ConfigError, ServiceConfig
from serving.loop import Loop
from serving.metrics import Metrics
from serving.policy import backoff
from serving.store import Arrival, JobStore
from triage.io.dicomweb import (
    AuthSource,
    DicomWebError,
    InstanceRef,
    check_url,
    connect,
    retrieve_instance,
    search_instances,
    search_studies,
)

logger = logging.getLogger(__name__)

RADIOGRAPHS = (str(uids.ComputedRadiographyImageStorage), str(uids.DigitalXRayImageStorageForPresentation))


@dataclass(frozen=True)
class PollConfig:
    """`triage poll` specifics."""

    url: str
    interval: float = 30.0
    since: date | None = None
    lookback_days: int = 1
    modalities: tuple[str, ...] = ("CR", "DX")
    auth: AuthSource = field(default_factory=AuthSource)

    def check(self, service: ServiceConfig) -> None:
        try:
            check_url(self.url, "URL")
            self.auth.check("triage poll")
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from None
        if self.interval <= 0:
            raise ConfigError(f"--poll-interval must be positive, got {self.interval}")
        if self.lookback_days < 0:
            raise ConfigError(f"--lookback-days must be 0 or more, got {self.lookback_days}")
        bad = [m for m in self.modalities if not m.isalnum() or len(m) > 16]
        if bad or not self.modalities:
            raise ConfigError(f"--modality {','.join(self.modalities)!r} must be modality codes, e.g. CR,DX")
        if service.inputs == "move":
            raise ConfigError("--inputs move is for `triage watch`; the poller keeps or deletes its spool")


class PollSource(Loop):
    """Polls in its own thread; the service's main loop queues the studies it registers."""

    name = "poll"

    def __init__(self, config: PollConfig, service: ServiceConfig, store: JobStore, metrics: Metrics) -> None:
        super().__init__("poll")
        self.config = config
        self.service = service
        self.store = store
        self.metrics = metrics
        self.spool = service.out / "spool"
        self.client = connect(config.url, config.auth)
        self.classes = RADIOGRAPHS + (
            (str(uids.DigitalXRayImageStorageForProcessing),) if service.any_modality else ()
        )
        self._seen: dict[str, int | None] = {}  # study → NumberOfStudyRelatedInstances at the last poll
        self._failures: dict[str, tuple[int, float]] = {}  # SOP → (failures, not before)
        self._cycles = 0
        self._busy = threading.Event()

    # --- Source -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._recover_spool()
        logger.info(
            "polling %s every %.0f s for %s studies",
            self.config.url,
            self.config.interval,
            ",".join(self.config.modalities),
            extra={"event": "poll_started"},
        )
        super().start()

    def drained(self) -> bool:
        """A full poll finished and none is running, and no instance waits for a retry."""
        return self._cycles > 0 and not self._busy.is_set() and not self._failures

    def tick(self) -> int:
        return 0

    def hold(self, paths: list[str], last_arrival: float) -> bool:
        return False

    # --- polling ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._busy.set()
            try:
                self.poll_once()
            except Exception as exc:  # never let one bad answer stop the poller
                logger.exception("poll failed: %s", exc, extra={"event": "poll_error"})
            finally:
                self._cycles += 1
                self._busy.clear()
            self._stop.wait(self.config.interval)

    def since(self) -> date:
        return self.config.since or (date.today() - timedelta(days=self.config.lookback_days))

    def poll_once(self) -> int:
        """One poll: returns the number of images taken in."""
        try:
            studies = self._search()
        except DicomWebError as exc:
            self._note(exc.message)
            return 0
        taken, errors = 0, []
        for study_uid, count in studies:
            if self._stop.is_set():
                break
            if count is not None and self._seen.get(study_uid) == count and not self._pending(study_uid):
                continue
            try:
                refs = search_instances(self.client, study_uid)
            except DicomWebError as exc:
                errors.append(exc.message)
                continue
            known = self.store.known_sops(study_uid)
            complete = True
            for ref in refs:
                if ref.sop_uid in known or not self._wanted(ref):
                    continue
                ok, error = self._take(ref)
                taken += ok
                if error:
                    errors.append(error)
                    complete = False
            if complete:
                self._seen[study_uid] = count
        self._note(f"{len(errors)} error(s); last: {errors[-1]}" if errors else None)
        return taken

    def _search(self) -> list[tuple[str, int | None]]:
        found = search_studies(self.client, self.since(), self.config.modalities)
        return [(ref.study_uid, ref.instances) for ref in found]

    def _wanted(self, ref: InstanceRef) -> bool:
        return ref.sop_class_uid is None or ref.sop_class_uid in self.classes

    def _pending(self, study_uid: str) -> bool:
        return any(key.startswith(study_uid + "/") for key in self._failures)

    def _take(self, ref: InstanceRef) -> tuple[int, str | None]:
        key = f"{ref.study_uid}/{ref.sop_uid}"
        failures, not_before = self._failures.get(key, (0, 0.0))
        if time.time() < not_before:
            return 0, None
        try:
            path = retrieve_instance(self.client, ref, self.spool)
            st = path.stat()
            self.store.register(
                Arrival(str(path), st.st_size, st.st_mtime_ns, time.time(), ref.study_uid, ref.sop_uid)
            )
        except DicomWebError as exc:
            delay = backoff(failures + 1, self.service.retry_base, self.service.retry_max)
            self._failures[key] = (failures + 1, time.time() + delay)
            logger.warning(
                "cannot retrieve an image (%s); retry in %.0f s",
                exc.message,
                delay,
                extra={"event": "poll_retrieve_failed", "study_uid": ref.study_uid, "sop_uid": ref.sop_uid},
            )
            return 0, exc.message
        self._failures.pop(key, None)
        self.metrics.received.labels(source=self.name).inc()
        return 1, None

    def _note(self, text: str | None) -> None:
        if text is not None:
            logger.error("poll: %s", text, extra={"event": "poll_problem"})
        self.store.set_note("poll", text)

    def _recover_spool(self) -> None:
        """Spool files written but not registered before a crash (registering is idempotent)."""
        from serving.watch import recover_spool

        recover_spool(self.spool, self.store)
