"""A batch's bookkeeping in ``--out``, shared by ``triage predict`` (:meth:`Predictor.run`) and the Ray
engine (:mod:`triage.scale.ray_engine`): which inputs to run (:func:`plan_batch`: refuse a finished
batch without ``resume``, expand and shard the arguments, skip what results.jsonl already holds), and
one writer of results.jsonl (:class:`BatchRecorder`: each input recorded once, even when a retried worker
reports it again; worklist.csv rebuilt at the end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from triage.cascade.items import Item
from triage.cascade.write import error_record
from triage.errors import ErrorCode, TriageError
from triage.io.manifest import Shard, select_inputs
from triage.outputs.batch import (
    RESULTS_NAME,
    ResultsWriter,
    finished_inputs,
    is_finished,
    read_results,
    write_worklist,
)
from triage.outputs.merge import write_shard_info
from triage.outputs.records import ResultRecord

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a batch did: its records (in results.jsonl order), inputs skipped by ``resume``, and seconds;
    ``failed_before``: error records that earlier, interrupted runs of the batch wrote for the skipped
    inputs (they count towards the exit status: the batch as a whole has failed inputs)."""

    records: list[ResultRecord]
    skipped: int
    seconds: float
    failed_before: int = 0

    @property
    def failed(self) -> int:
        """Failed inputs of this run."""
        return sum(r.status == "error" for r in self.records)

    @property
    def failed_in_batch(self) -> int:
        """Failed inputs of the whole batch (this run and the runs ``--resume`` continued)."""
        return self.failed + self.failed_before


@dataclass(frozen=True)
class BatchPlan:
    """todo: files to run, in order. missing: arguments that name no file, not yet recorded.
    done: inputs results.jsonl already holds, as paths and path digests (``resume``; test with
    :func:`~triage.outputs.batch.is_finished`). skipped: selected files among them."""

    todo: list[str]
    missing: list[tuple[str, TriageError]]
    done: frozenset[str]
    skipped: int

    @property
    def total(self) -> int:
        """Records this run will add."""
        return len(self.todo) + len(self.missing)


def plan_batch(inputs: Iterable[str], out: Path, resume: bool, shard: Shard | None = None) -> BatchPlan:
    """The inputs of a batch into ``out``: ``inputs`` (files, folders, globs) expanded, kept to ``shard``,
    less what ``out/results.jsonl`` holds when ``resume``. With a shard, ``out/shard.json`` records it.

    Raises TriageError(WRITE_FAILED) when ``out`` already holds a results.jsonl and ``resume`` is off (a
    finished batch is never overwritten by accident).
    """
    results_path = out / RESULTS_NAME
    if results_path.exists() and not resume:
        raise TriageError(
            ErrorCode.WRITE_FAILED,
            f"{results_path} exists: pass --resume to continue that batch, or choose another --out",
        )
    done = frozenset(finished_inputs(out)) if resume else frozenset()
    files, missing = select_inputs(list(inputs), shard)
    if shard is not None:
        write_shard_info(out, str(shard), len(files) + len(missing))
    todo = [str(p) for p in files if not is_finished(str(p), done)]
    missing = [(a, e) for a, e in missing if not is_finished(a, done)]
    return BatchPlan(todo, missing, done, len(files) - len(todo))


def _remove_partial_writes(out: Path) -> None:
    """Delete temporary files that a killed writer left beside its targets (``.NAME.XXXX.tmp``, see
    :mod:`triage.outputs.atomic`); the batch is finished, so no writer of this ``out`` is running."""
    stale = list((out / "studies").glob("*/.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary files left by interrupted writes", len(stale))


class BatchRecorder:
    """The one writer of ``out/results.jsonl`` during a batch (a context manager).

    :meth:`record` appends a record (fsynced) unless its input was already recorded, in this run or
    before it (``plan.done``; inputs are told apart by :attr:`ResultRecord.key`, the path's digest, since
    a path may be redacted), then calls ``on_record``; leaving the context rebuilds worklist.csv from
    all records in the file.
    """

    def __init__(
        self, out: Path, plan: BatchPlan, bundle_label: str,
        on_record: Callable[[ResultRecord], None] | None = None,
    ) -> None:
        self.out = out
        self.plan = plan
        self.bundle_label = bundle_label
        self.on_record = on_record
        self.records: list[ResultRecord] = []
        self.duplicates = 0
        self._failed_before = 0  # set on leaving the context, from results.jsonl
        self._seen = set(plan.done)
        self._writer = ResultsWriter(out)
        self._start = time.perf_counter()

    def __enter__(self) -> BatchRecorder:
        self.out.mkdir(parents=True, exist_ok=True)
        self._writer.__enter__()
        for arg, err in self.plan.missing:
            self.record(error_record(Item(input=arg, error=err), self.bundle_label))
        return self

    def record(self, record: ResultRecord) -> None:
        if record.key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(record.key)
        self._writer.write(record)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.__exit__(exc_type, exc, tb)
        if exc_type is None:
            _remove_partial_writes(self.out)
            everything = read_results(self.out)
            write_worklist(self.out, everything)
            mine = {r.key for r in self.records}
            self._failed_before = sum(r.status == "error" and r.key not in mine for r in everything)

    def summary(self) -> Summary:
        seconds = time.perf_counter() - self._start
        return Summary(self.records, self.plan.skipped, seconds, self._failed_before)
