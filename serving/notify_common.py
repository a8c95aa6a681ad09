"""What the HL7 and FHIR notifications say about a positive study, taken from the study's result summary
(serving/worker.py ``study_summary``) and, for the two identifiers the receiver files the result under,
one DICOM output of the study.

Patient data sent, and why (nothing else): the **PatientID** (with its issuer, IssuerOfPatientID, when
present) and the study's **AccessionNumber**, because a RIS / EHR files an incoming result under the
patient and the order, and these are the identifiers it matches on. Not sent: name, birth date, sex,
address or any other demographic: the receiver already holds them under the PatientID, and a message
that carries them is one more copy of PHI to protect. Both identifiers are read from the SEG / SC / SR
that triage wrote for the study when the notification is sent (they are never stored in the job
store and never logged); a study without a DICOM output is notified with its Study Instance UID only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

DICOM_KINDS = ("sr", "seg", "sc")


@dataclass(frozen=True)
class Finding:
    action_id: int
    study_uid: str
    sop_uids: tuple[str, ...]
    probability: float | None
    positive: bool
    decision: str  # POSITIVE | NEGATIVE
    bundle: str
    finished_at: str  # ISO 8601 UTC
    patient_id: str | None
    patient_id_issuer: str | None
    accession: str | None


def finding(action_id: int, payload: str, out: Path) -> Finding:
    summary: dict[str, Any] = json.loads(payload)
    records = [r for r in summary.get("records") or [] if r.get("status") == "ok"]
    patient_id = issuer = accession = None
    for record in records:
        for kind in DICOM_KINDS:
            rel = (record.get("outputs") or {}).get(kind)
            if not rel:
                continue
            try:
                ds = pydicom.dcmread(out / rel, stop_before_pixels=True)
            except (OSError, pydicom.errors.InvalidDicomError):
                continue
            patient_id = str(ds.get("PatientID", "") or "") or None
            issuer = str(ds.get("IssuerOfPatientID", "") or "") or None
            accession = str(ds.get("AccessionNumber", "") or "") or None
            break
        if patient_id is not None:
            break
    positive = bool(summary.get("positive"))
    return Finding(
        action_id=action_id,
        study_uid=str(summary["study_uid"]),
        sop_uids=tuple(str(r["sop_uid"]) for r in records if r.get("sop_uid")),
        probability=summary.get("max_probability"),
        positive=positive,
        decision="POSITIVE" if positive else "NEGATIVE",
        bundle=str(summary.get("bundle") or ""),
        finished_at=str(summary.get("finished_at") or ""),
        patient_id=patient_id,
        patient_id_issuer=issuer,
        accession=accession,
    )
