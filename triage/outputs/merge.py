"""``triage merge``: join the ``--out`` folders of shard jobs into one results.jsonl and one worklist.csv.

Each part is the ``--out`` of one ``triage predict --shard K/N`` (or any batch). The merged results.jsonl
holds every input once (the last record per input within a part, as ``--resume`` reads them; across
parts the first ok record wins), with each record's ``outputs`` re-pointed relative to the merged folder:
the per-study files stay where the shard wrote them, nothing is copied. A part written with ``--shard``
holds ``shard.json`` (its K/N and how many records it owes); the merge checks that the parts are shards of
one split, that none is missing or repeated, and that each finished, and says precisely what is not.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from triage.outputs.atomic import atomic_write_bytes
from triage.outputs.batch import RESULTS_NAME, read_results, write_worklist
from triage.outputs.records import ResultRecord

SHARD_NAME = "shard.json"
MERGE_NAME = "merge.json"


class MergeError(ValueError):
    """The parts cannot be merged (missing, or the target would overwrite a batch); one-line message."""


def write_shard_info(out: Path, shard: str, expected: int) -> None:
    """Record in ``out/shard.json`` which shard ``out`` holds and how many records it owes."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / SHARD_NAME, json.dumps({"shard": shard, "records": expected}).encode() + b"\n")


@dataclass
class MergeSummary:
    parts: int
    records: list[ResultRecord]
    duplicates: int  # records dropped because another part already had that input
    problems: list[str] = field(default_factory=list)  # missing / repeated / unfinished shards

    @property
    def failed(self) -> int:
        return sum(r.status == "error" for r in self.records)


def _rebased(record: ResultRecord, part: Path, out: Path) -> ResultRecord:
    if part.resolve() != out.resolve():
        record.outputs = {k: os.path.relpath(part / v, out) for k, v in record.outputs.items()}
    return record


def _shard_problems(infos: dict[Path, dict[str, object]], counts: dict[Path, int]) -> list[str]:
    problems: list[str] = []
    seen: dict[tuple[int, int], Path] = {}
    totals: set[int] = set()
    for part, info in infos.items():
        k, _, n = str(info.get("shard", "")).partition("/")
        if not (k.isdigit() and n.isdigit()):
            problems.append(f"{part}: {SHARD_NAME} is damaged")
            continue
        key = (int(k), int(n))
        totals.add(key[1])
        if key in seen:
            problems.append(f"shard {k}/{n} appears twice ({seen[key]} and {part})")
        seen[key] = part
        owed = info.get("records")
        if isinstance(owed, int) and counts[part] < owed:
            problems.append(f"shard {k}/{n} in {part} is unfinished: {counts[part]} of {owed} records")
    if len(totals) > 1:
        problems.append(f"the parts come from different splits: N = {sorted(totals)}")
    elif totals:
        (count,) = totals
        absent = [f"{k}/{count}" for k in range(count) if (k, count) not in seen]
        if absent:
            problems.append(f"shards missing: {', '.join(absent[:10])}{' …' if len(absent) > 10 else ''}")
    return problems


def merge_outputs(parts: Sequence[Path], out: Path) -> MergeSummary:
    """Merge ``parts`` into ``out/results.jsonl`` and ``out/worklist.csv`` (both written atomically).

    Raises MergeError when a part has no results.jsonl, when ``out`` is one of the parts, or when ``out``
    holds a results.jsonl that an earlier merge did not write (a batch is never overwritten).
    """
    if not parts:
        raise MergeError("name at least one shard output folder (the --out of each `triage predict --shard`)")
    resolved = [p.resolve() for p in parts]
    if len(set(resolved)) < len(resolved):
        raise MergeError("a part folder is named twice")
    if out.resolve() in resolved:
        raise MergeError(f"--out {out} is one of the parts; merge into another folder (e.g. their parent)")
    for part in parts:
        if not (part / RESULTS_NAME).is_file():
            raise MergeError(f"{part} holds no {RESULTS_NAME}: not the --out of a `triage predict` run")
    if (out / RESULTS_NAME).exists() and not (out / MERGE_NAME).exists():
        raise MergeError(
            f"{out / RESULTS_NAME} exists and was not written by `triage merge`; choose another --out"
        )
    merged: dict[str, ResultRecord] = {}
    duplicates = 0
    infos: dict[Path, dict[str, object]] = {}
    counts: dict[Path, int] = {}
    for part in parts:
        records = read_results(part)
        counts[part] = len(records)
        if (part / SHARD_NAME).is_file():
            try:
                info = json.loads((part / SHARD_NAME).read_text(encoding="utf-8"))
            except ValueError:
                info = {}
            infos[part] = info if isinstance(info, dict) else {}
        for record in records:
            earlier = merged.get(record.key)
            if earlier is not None:
                duplicates += 1
                if earlier.status == "ok" or record.status != "ok":
                    continue
            merged[record.key] = _rebased(record, part, out)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    for record in merged.values():
        text.write(record.to_json() + "\n")
    atomic_write_bytes(out / RESULTS_NAME, text.getvalue().encode("utf-8"))
    write_worklist(out, merged.values())
    summary = MergeSummary(len(parts), list(merged.values()), duplicates, _shard_problems(infos, counts))
    marker = {"parts": [os.path.relpath(p, out) for p in parts], "problems": summary.problems}
    atomic_write_bytes(out / MERGE_NAME, json.dumps(marker, indent=1).encode() + b"\n")
    return summary
