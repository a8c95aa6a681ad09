"""Manifests and shards: ``--files-from MANIFEST`` and ``--shard K/N`` for any scheduler.

A manifest lists inputs, each treated exactly like a command-line argument (a file, a folder searched
recursively, or a glob): a text file with one per line (blank lines skipped, surrounding spaces
stripped), a CSV or Parquet file with a column of them, or ``-`` for standard input. A manifest can sit on
a file share or, through pyarrow's filesystems, an object store (``s3://``, ``gs://``, ``hdfs://``, …).

A shard is a stable split of the *expanded* file list by file path: file ``p`` belongs to shard
``blake2b(normpath(p)) mod N``. Every job expands the same arguments the same way (deduplicated by real
path, first spelling kept), so ``N`` independent jobs with ``--shard 0/N`` … ``--shard N-1/N`` cover every
file exactly once; an argument that names nothing gets its error record in the shard of its own text.
Shards are numbered from 0, like Slurm array indexes (``--array=0-7``) and Kubernetes indexed Jobs
(``JOB_COMPLETION_INDEX``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from triage.errors import TriageError
from triage.io.inputs import expand_inputs

DEFAULT_COLUMN = "path"
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class ManifestError(ValueError):
    """A manifest or shard that cannot be used; the message names the problem and what is valid."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 ≤ index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ManifestError(
                f"--shard {self.index}/{self.count}: K/N needs N >= 1 and 0 <= K <= N-1 "
                "(shards count from 0)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` → Shard(K, N); raises ManifestError naming the valid form."""
        k, sep, n = text.strip().partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise ManifestError(f"--shard {text!r}: expected K/N with whole numbers, e.g. 0/8 … 7/8")
        return cls(int(k), int(n))

    def holds(self, path: str) -> bool:
        """Whether ``path`` (a file path or an argument's text) belongs to this shard."""
        digest = hashlib.blake2b(os.path.normpath(path).encode("utf-8", "surrogateescape"), digest_size=8)
        return int.from_bytes(digest.digest(), "big") % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def select_inputs(
    args: Sequence[str], shard: Shard | None = None
) -> tuple[list[Path], list[tuple[str, TriageError]]]:
    """:func:`~triage.io.inputs.expand_inputs`, keeping only the files (and the arguments that named no
    file) that belong to ``shard``; everything when ``shard`` is None."""
    files, missing = expand_inputs(args)
    if shard is None:
        return files, missing
    return [p for p in files if shard.holds(str(p))], [(a, e) for a, e in missing if shard.holds(a)]


def _open_binary(source: str) -> IO[bytes]:
    if source == "-":
        return sys.stdin.buffer
    if "://" in source:
        try:
            from pyarrow import fs
        except ImportError as exc:
            raise ManifestError(
                f"--files-from {source!r}: reading a URI needs pyarrow: pip install 'triage[scale]'"
            ) from exc
        try:
            filesystem, path = fs.FileSystem.from_uri(source)
            return io.BytesIO(filesystem.open_input_stream(path).read())
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise ManifestError(f"--files-from {source!r}: cannot read it ({reason})") from exc
    try:
        return open(source, "rb")
    except OSError as exc:
        raise ManifestError(f"--files-from {source!r}: {exc.strerror or exc}") from exc


def _pick_column(names: Sequence[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in names:
            raise ManifestError(
                f"--files-from {source!r} has no column {column!r}; its columns: {list(names)}"
            )
        return column
    if DEFAULT_COLUMN in names:
        return DEFAULT_COLUMN
    if len(names) == 1:
        return names[0]
    raise ManifestError(
        f"--files-from {source!r}: name the column of paths with --column; its columns: {list(names)}"
    )


def _csv_rows(data: bytes, column: str | None, source: str) -> Iterator[str]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig", "surrogateescape"), newline=""))
    name = _pick_column(reader.fieldnames or [], column, source)
    for row in reader:
        yield row.get(name) or ""


def _parquet_rows(data: bytes, column: str | None, source: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        hint = "Parquet needs pyarrow: pip install 'triage[scale]'"
        raise ManifestError(f"--files-from {source!r}: {hint}") from exc
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a damaged file
        raise ManifestError(f"--files-from {source!r}: not a readable Parquet file ({exc})") from exc
    name = _pick_column(table.column_names, column, source)
    for value in table.column(name).to_pylist():
        yield "" if value is None else str(value)


def read_manifest(source: str, column: str | None = None) -> list[str]:
    """The inputs listed in ``source`` (a path, a URI pyarrow reads, or ``-`` for stdin), in order.

    Format by suffix: ``.csv`` (the ``column``, else a column named ``path``, else the only column),
    ``.parquet``/``.pq`` (likewise), anything else one input per line. Blank entries are skipped and
    surrounding whitespace stripped; duplicates are kept here (expanding the inputs removes them). Raises
    ManifestError with a one-line message when the manifest cannot be read.
    """
    suffix = Path(source.split("?", 1)[0]).suffix.lower() if source != "-" else ""
    if column is not None and suffix not in TABLE_SUFFIXES:
        raise ManifestError(f"--column applies to a .csv or .parquet manifest, not {source!r}")
    stream = _open_binary(source)
    try:
        data = stream.read()
    except OSError as exc:
        raise ManifestError(f"--files-from {source!r}: {exc.strerror or exc}") from exc
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if suffix == ".csv":
        rows: Iterator[str] = _csv_rows(data, column, source)
    elif suffix in (".parquet", ".pq"):
        rows = _parquet_rows(data, column, source)
    else:
        rows = iter(data.decode("utf-8", "surrogateescape").splitlines())
    return [entry for entry in (row.strip() for row in rows) if entry]
