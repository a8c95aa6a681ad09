"""FHIR R4 notification (``--on-positive-fhir BASE_URL``): one transaction Bundle per positive study,
POSTed to the FHIR base URL, holding an ``Observation`` (the probability and the decision) and a
``DiagnosticReport`` (status final) whose ``result`` points at it. Built and validated with
``fhir.resources`` (its R4B models: R4's DiagnosticReport and Observation are unchanged in R4B).

Both entries are conditional creates (``ifNoneExist`` on the identifier
``urn:triage:study-notification|<StudyInstanceUID>``), so a retry after a lost answer does not create a
second report. The subject is a logical reference by
PatientID (and the accession number is the report's ACSN identifier) — see serving/notify_common.py
for the patient fields and why; the Study Instance UID is an identifier of both resources
(``urn:dicom:uid``), the SOP Instance UIDs are Observation components.

Answers: 2xx → done; 5xx, 408, 429, 401 and network errors → retried; other 4xx (the server rejects the
resource) → failed at once, with the server's OperationOutcome diagnostics (first 200 characters) as
the reason.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from serving.notify_common import Finding
from triage.io.dicomweb import AuthSource

TIMEOUT = 15.0
LOINC_RADIOLOGY = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def build_bundle(f: Finding) -> dict[str, Any]:
    """The transaction Bundle for one finding, as JSON-ready data (validated by fhir.resources)."""
    action = {"system": "urn:triage:study-notification", "value": f.study_uid}
    obs_url, report_url = (f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, f'{f.study_uid}/{n}')}" for n in (1, 2))
    study = {"system": "urn:dicom:uid", "value": f"urn:oid:{f.study_uid}"}
    subject: dict[str, Any] | None = None
    if f.patient_id:
        ident: dict[str, Any] = {"value": f.patient_id}
        if f.patient_id_issuer:
            ident["assigner"] = {"display": f.patient_id_issuer}
        subject = {"identifier": ident}
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [action, study],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                    }
                ]
            }
        ],
        "code": {"text": "Pneumothorax AI triage probability"},
        "effectiveDateTime": f.finished_at,
        "valueQuantity": {
            "value": round(f.probability, 6) if f.probability is not None else None,
            "unit": "probability",
            "system": "http://unitsofmeasure.org",
            "code": "1",
        },
        "interpretation": [
            {
                "coding": [{"system": INTERPRETATION, "code": "POS" if f.positive else "NEG"}],
                "text": f.decision,
            }
        ],
        "device": {"display": f"triage model bundle {f.bundle}"},
        "component": [{"code": {"text": "SOP Instance UID"}, "valueString": sop} for sop in f.sop_uids],
    }
    if f.probability is None:
        del observation["valueQuantity"]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [action, study],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {"coding": [LOINC_RADIOLOGY], "text": "Pneumothorax AI triage"},
        "effectiveDateTime": f.finished_at,
        "result": [{"reference": obs_url}],
        "conclusion": f"AI triage {f.decision.lower()} for pneumothorax (model bundle {f.bundle})",
    }
    if f.accession:
        report["identifier"].append(
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": f.accession,
            }
        )
    if subject is not None:
        observation["subject"] = report["subject"] = subject
    query = f"identifier=urn:triage:study-notification|{f.study_uid}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": obs_url,
                "resource": observation,
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": query},
            },
            {
                "fullUrl": report_url,
                "resource": report,
                "request": {"method": "POST", "url": "DiagnosticReport", "ifNoneExist": query},
            },
        ],
    }
    # fhir.resources validates the structure (raises pydantic's ValidationError on a bad resource)
    return dict(json.loads(Bundle.model_validate(bundle).model_dump_json(exclude_none=True)))


def post_bundle(base: str, bundle: dict[str, Any], auth: AuthSource, key: str) -> tuple[str | None, bool]:
    """POST ``bundle`` to the FHIR base URL: (error or None, permanent)."""
    headers = {
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
        "User-Agent": "triage",
    }
    credentials = auth.load("--on-positive-fhir")
    if credentials is not None:
        headers["Authorization"] = credentials.header()
    headers["X-Request-Id"] = key
    request = urllib.request.Request(
        base.rstrip("/"), data=json.dumps(bundle).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = _diagnostics(exc.read(65536))
        transient = exc.code >= 500 or exc.code in (401, 408, 429)
        hint = " (credentials rejected or token expired)" if exc.code == 401 else ""
        return f"FHIR server answered HTTP {exc.code}{hint}" + (
            f": {detail}" if detail else ""
        ), not transient
    except (urllib.error.URLError, OSError) as exc:
        return f"FHIR: cannot reach the server ({getattr(exc, 'reason', exc)})", False
    return None, False


def _diagnostics(body: bytes) -> str:
    try:
        outcome = json.loads(body)
        issues = outcome.get("issue") or []
        return "; ".join(str(i.get("diagnostics") or i.get("code") or "") for i in issues)[:200]
    except (ValueError, AttributeError):
        return ""
