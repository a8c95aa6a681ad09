"""Prometheus metrics and the loopback HTTP endpoint (``/metrics``, ``/healthz``).

Metrics (all prefixed ``triage_``):

=====================================  =========  ==================================================
``studies{state}``                     gauge      study versions by job state (from the job store)
``queue_depth``                        gauge      versions queued or running
``quarantined_files_unattributed``     gauge      files quarantined before a study could be read
``failures_total{code}``               counter    image / file failures by error code
``images_total{status}``               counter    images processed (ok, error)
``studies_finished_total{state}``      counter    versions finished since start (done, ...)
``retries_total{code}``                counter    versions re-queued after a transient failure
``processing_seconds``                 histogram  claim → results committed, per study version
``arrival_to_result_seconds``          histogram  first image arrived → results committed
``received_files_total{source}``       counter    files taken in (watch, listen)
``rejected_stores_total{reason}``      counter    C-STORE requests answered with a failure status
``outbox{state}``                      gauge      objects to forward by state (pending, delivered, ...)
``forwarded_total{outcome}``           counter    C-STORE attempts to the PACS by outcome
``actions{state}``                     gauge      on-positive actions by state
``disk_free_bytes``                    gauge      free space in the output folder
=====================================  =========  ==================================================

plus the standard ``process_*`` metrics (resident memory, CPU seconds, open files).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.store import JOB_STATES, JobStore

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_ARRIVAL_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)


class _StoreCollector(Collector):
    """Gauges read from the job store at scrape time (so they are right after a restart too)."""

    def __init__(self, store: JobStore, out: Path) -> None:
        self.store = store
        self.out = out

    def collect(self) -> Iterator[Metric]:
        jobs = self.store.counts("jobs")
        studies = GaugeMetricFamily("triage_studies", "Study versions by job state", labels=["state"])
        for state in JOB_STATES:
            studies.add_metric([state], jobs.get(state, 0))
        yield studies
        yield GaugeMetricFamily(
            "triage_queue_depth",
            "Study versions queued or running",
            value=jobs.get("queued", 0) + jobs.get("running", 0),
        )
        yield GaugeMetricFamily(
            "triage_quarantined_files_unattributed",
            "Files quarantined before a study could be read",
            value=self.store.unattributed_quarantined(),
        )
        for table, what in (("outbox", "Objects to forward"), ("actions", "On-positive actions")):
            family = GaugeMetricFamily(f"triage_{table}", f"{what} by state", labels=["state"])
            for state, n in sorted(self.store.counts(table).items()):
                family.add_metric([state], n)
            yield family
        try:
            free = shutil.disk_usage(self.out).free
        except OSError:
            free = 0
        yield GaugeMetricFamily("triage_disk_free_bytes", "Free space in the output folder", value=free)


class Metrics:
    """The service's metrics in their own registry (no global state; tests can make many)."""

    def __init__(self, store: JobStore, out: Path) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(_StoreCollector(store, out))
        r = self.registry
        self.failures = Counter(
            "triage_failures", "Image or file failures by error code", ["code"], registry=r
        )
        self.images = Counter("triage_images", "Images processed by status", ["status"], registry=r)
        self.finished = Counter("triage_studies_finished", "Study versions finished", ["state"], registry=r)
        self.retries = Counter("triage_retries", "Re-queues after a transient failure", ["code"], registry=r)
        self.processing = Histogram(
            "triage_processing_seconds",
            "Claim to results committed, per study version",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.arrival_to_result = Histogram(
            "triage_arrival_to_result_seconds",
            "First image arrived to results committed",
            buckets=_ARRIVAL_BUCKETS,
            registry=r,
        )
        self.received = Counter("triage_received_files", "Files taken in", ["source"], registry=r)
        self.rejected = Counter("triage_rejected_stores", "C-STORE requests refused", ["reason"], registry=r)
        self.forwarded = Counter("triage_forwarded", "C-STORE attempts to the PACS", ["outcome"], registry=r)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class HttpEndpoint:
    """``/metrics`` and ``/healthz`` on a loopback port, in a daemon thread.

    ``/healthz`` answers 200 with ``{"status": "ok"|"degraded", ...}`` while every component thread is
    alive (degraded: e.g. low disk, PACS unreachable — a restart would not help), 503 with
    ``"status": "unhealthy"`` when one has died.
    """

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], dict[str, Any]]) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = endpoint.metrics.exposition(), CONTENT_TYPE_LATEST, 200
                elif path in ("/healthz", "/health"):
                    state = endpoint.health()
                    code = 503 if state.get("status") == "unhealthy" else 200
                    body, ctype = (json.dumps(state) + "\n").encode(), "application/json"
                else:
                    body, ctype, code = b"not found: try /metrics or /healthz\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http " + format, *args)

        self.metrics = metrics
        self.health = health
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
