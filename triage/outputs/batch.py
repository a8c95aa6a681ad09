"""Batch bookkeeping under ``--out``: results.jsonl (append-only, durable per line), resume, worklist.csv.

``results.jsonl`` holds one :class:`ResultRecord` per line. Each line is flushed and fsynced as soon as
its input is finished, so an interrupted batch loses nothing that finished; at worst the last line is
torn, which the readers skip and :class:`ResultsWriter` cuts off before appending.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from triage.errors import ErrorCode, TriageError
from triage.outputs.atomic import atomic_write_bytes
from triage.outputs.paths import validated_uid
from triage.outputs.records import ResultRecord, input_digest

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
WORKLIST_NAME = "worklist.csv"
FINISHED_STATUSES = frozenset({"ok", "error"})
WORKLIST_COLUMNS = (
    "rank",
    "study_uid",
    "priority",
    "max_probability",
    "positive",
    "images",
    "positive_images",
    "max_mask_area_mm2",
    "errors",
    "outputs",
)


def _write_failed(path: Path, exc: OSError) -> TriageError:
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    return TriageError(ErrorCode.WRITE_FAILED, f"could not write {path}: {reason} ({type(exc).__name__})")


class ResultsWriter:
    """Context manager appending records to ``out/results.jsonl``; each line is flushed and fsynced.

    ``truncate=True`` starts a new file (a fresh run); otherwise records are appended (``--resume``)
    after cutting off a torn last line. Raises TriageError(WRITE_FAILED) if the file cannot be written.
    """

    def __init__(self, out: Path, *, truncate: bool = False) -> None:
        self.path = Path(out) / RESULTS_NAME
        self._truncate = truncate
        self._fh: IO[str] | None = None

    def __enter__(self) -> ResultsWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._truncate:
                _cut_torn_tail(self.path)
            self._fh = open(self.path, "w" if self._truncate else "a", encoding="utf-8")
        except OSError as exc:
            raise _write_failed(self.path, exc) from exc
        return self

    def write(self, record: ResultRecord) -> None:
        """Append ``record`` as one JSON line, then flush and fsync."""
        if self._fh is None:
            raise RuntimeError(f"ResultsWriter for {self.path} is not open; use it in a with statement")
        try:
            self._fh.write(record.to_json() + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise _write_failed(self.path, exc) from exc

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as close_exc:
                if exc is None:
                    raise _write_failed(self.path, close_exc) from close_exc


def _cut_torn_tail(path: Path) -> None:
    """Make ``path`` end with a newline: a final line without one is completed if it is a whole JSON
    object, else (an interrupted write) truncated away."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[keep:]), dict)
        except ValueError:
            complete = False
        if complete:
            fh.write(b"\n")
        else:
            logger.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - keep)
            fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def read_results(out: Path) -> list[ResultRecord]:
    """Records in ``out/results.jsonl`` (none if absent), the last one per input, in file order.

    Lines that are not JSON objects (a torn last line) are skipped with a warning.
    """
    path = Path(out) / RESULTS_NAME
    if not path.exists():
        return []
    by_input: dict[str, ResultRecord] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                values: Any = json.loads(line)
                if not isinstance(values, dict) or not isinstance(values.get("input"), str):
                    raise ValueError("not a record object")
                record = ResultRecord.from_dict(values)
            except (ValueError, TypeError) as exc:
                logger.warning("%s line %d: skipped, not a complete record (%s)", path, number, exc)
                continue
            by_input.pop(record.key, None)
            by_input[record.key] = record
    return list(by_input.values())


def finished_inputs(out: Path) -> set[str]:
    """Inputs recorded in ``out/results.jsonl`` with status ok or error: ``--resume`` skips these. Holds
    each record's ``input`` and ``input_sha256`` (test a path with :func:`is_finished`)."""
    done = [r for r in read_results(out) if r.status in FINISHED_STATUSES]
    return {r.input for r in done} | {r.input_sha256 for r in done if r.input_sha256}


def is_finished(path: str, done: AbstractSet[str]) -> bool:
    """Whether input ``path`` (as given) is among :func:`finished_inputs`."""
    return path in done or input_digest(path) in done


@dataclass
class _Study:
    uid: str
    records: list[ResultRecord] = field(default_factory=list)

    @property
    def ok(self) -> list[ResultRecord]:
        return [r for r in self.records if r.status == "ok"]

    @property
    def decided(self) -> list[ResultRecord]:
        """Records with a decision: ok ones, and write_failed ones that kept their probability."""
        return [r for r in self.records if r.probability is not None]

    @property
    def positive(self) -> bool:
        return any(r.positive for r in self.decided)

    @property
    def max_probability(self) -> float | None:
        values = [r.probability for r in self.decided if r.probability is not None]
        return max(values) if values else None

    def sort_key(self) -> tuple[int, float, str]:
        """Positives first, then by max probability descending (none last), then by UID."""
        p = self.max_probability
        return (0 if self.positive else 1, -p if p is not None else float("inf"), self.uid)


def _cell(value: str) -> str:
    """``value`` made safe for spreadsheets (no leading =, +, -, @ that would start a formula)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def _number(value: float | None, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _row(rank: int, study: _Study) -> list[str]:
    ok = study.ok
    priorities = [r.priority for r in study.records if r.priority is not None]
    areas = [r.mask_area_mm2 for r in study.decided if r.mask_area_mm2 is not None]
    written = [path for r in study.records for path in r.outputs.values()]
    if written:  # the folder its outputs went to (a merged batch keeps them in the shard's folder)
        outputs = os.path.dirname(written[0])
    else:
        try:
            outputs = f"studies/{validated_uid(study.uid, 'StudyInstanceUID')}"
        except TriageError:
            logger.warning("worklist: study with an invalid StudyInstanceUID has no output folder")
            outputs = ""
    return [
        str(rank),
        _cell(study.uid),
        _number(max(priorities) if priorities else None, 4),
        _number(study.max_probability, 4),
        "true" if study.positive else "false",
        str(len(ok)),
        str(sum(1 for r in study.decided if r.positive)),
        _number(max(areas) if areas else None, 1),
        str(sum(1 for r in study.records if r.status == "error")),
        outputs,
    ]


def write_worklist(out: Path, records: Iterable[ResultRecord]) -> Path:
    """Write ``out/worklist.csv`` atomically: one row per study, most urgent first; returns its path.

    Studies are the records' ``study_uid`` (records without one, e.g. unreadable files, are left out).
    Order: positive studies by max probability descending, then the others likewise; studies without a
    probability (only errors) come last. Columns: :data:`WORKLIST_COLUMNS`; ``images`` counts ok records,
    ``errors`` error records, ``outputs`` is the study folder relative to ``out``.
    """
    studies: dict[str, _Study] = {}
    for record in records:
        if record.study_uid:
            studies.setdefault(record.study_uid, _Study(record.study_uid)).records.append(record)
    ordered = sorted(studies.values(), key=_Study.sort_key)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(WORKLIST_COLUMNS)
    writer.writerows(_row(rank, study) for rank, study in enumerate(ordered, start=1))
    path = Path(out) / WORKLIST_NAME
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
    logger.info("wrote %s (%d studies, %d positive)", path, len(ordered), sum(s.positive for s in ordered))
    return path
