"""HL7 v2.5 ORU^R01 over MLLP (``--on-positive-hl7 HOST:PORT``): one message per positive study, built
with hl7apy, sent over a TCP connection in MLLP framing (0x0B … 0x1C 0x0D), and acknowledged.

Message (see serving/notify_common.py for the patient fields and why):

    MSH  sending application TRIAGE, message control id ``TRIAGE-<action id>`` (the same on a retry, so
         the receiver can drop a repeat), processing id P, version 2.5
    PID  PID-3 PatientID (^^^issuer)                            -- nothing else about the patient
    OBR  OBR-3 AccessionNumber, OBR-4 ``PTX-AI^Pneumothorax AI triage^L``, OBR-7 time, OBR-25 F
    OBX  1 ST  Study Instance UID · 2 NM probability · 3 ST decision (POSITIVE / NEGATIVE)
         4 ST bundle id · 5.. ST SOP Instance UID of each image

The answer: MSA-1 AA / CA → done; AE / CE (application error) → retried; AR / CR (rejected) → failed at
once with the receiver's MSA-3 text; no answer within ``TIMEOUT`` or a broken connection → retried.
"""

from __future__ import annotations

import socket
import time

from hl7apy.core import Message
from hl7apy.parser import parse_message

from serving.config import parse_host_port
from serving.notify_common import Finding

START, END = b"\x0b", b"\x1c\x0d"
TIMEOUT = 15.0
MAX_ANSWER = 1 << 20


def _escape(text: str) -> str:
    """HL7 escape sequences for the delimiters (values here are UIDs and codes; belt and braces)."""
    for char, esc in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(char, esc)
    return text


def build_oru(f: Finding) -> str:
    """The ORU^R01 message for one finding (ER7, segments separated by CR)."""
    m = Message("ORU_R01", version="2.5")
    m.msh.msh_3 = "TRIAGE"
    m.msh.msh_7 = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = f"TRIAGE-{f.action_id}"
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.5"
    group = m.add_group("ORU_R01_PATIENT_RESULT")
    patient = group.add_group("ORU_R01_PATIENT")
    pid = patient.add_segment("PID")
    pid.pid_1 = "1"
    if f.patient_id:
        pid.pid_3 = _escape(f.patient_id) + (
            f"^^^{_escape(f.patient_id_issuer)}" if f.patient_id_issuer else ""
        )
    order = group.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    if f.accession:
        obr.obr_3 = _escape(f.accession)
    obr.obr_4 = "PTX-AI^Pneumothorax AI triage^L"
    obr.obr_7 = f.finished_at.replace("-", "").replace(":", "").replace("T", "").rstrip("Z")[:14]
    obr.obr_25 = "F"
    values: list[tuple[str, str, str]] = [
        ("ST", "STUDYUID^Study Instance UID^L", f.study_uid),
        (
            "NM",
            "PTX-PROB^Pneumothorax probability^L",
            "" if f.probability is None else f"{f.probability:.4f}",
        ),
        ("ST", "PTX-DECISION^Triage decision^L", f.decision),
        ("ST", "BUNDLE^Model bundle^L", _escape(f.bundle)),
    ]
    values += [("ST", "SOPUID^SOP Instance UID^L", sop) for sop in f.sop_uids]
    for n, (kind, code, value) in enumerate(values, start=1):
        obs = order.add_group("ORU_R01_OBSERVATION")
        obx = obs.add_segment("OBX")
        obx.obx_1 = str(n)
        obx.obx_2 = kind
        obx.obx_3 = code
        obx.obx_5 = value
        obx.obx_11 = "F"
    return str(m.to_er7())


def send_mllp(target: str, message: str, timeout: float = TIMEOUT) -> tuple[str | None, bool]:
    """Send one message to ``HOST:PORT`` and read the acknowledgement: (error or None, permanent)."""
    host, port = parse_host_port(target, "--on-positive-hl7")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(START + message.encode("utf-8") + END)
            answer = b""
            while END not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    return "MLLP: the connection closed before an acknowledgement", False
                answer += chunk
                if len(answer) > MAX_ANSWER:
                    return "MLLP: acknowledgement too long", False
    except TimeoutError:
        return f"MLLP: no acknowledgement within {timeout:.0f} s", False
    except OSError as exc:
        return f"MLLP: cannot connect to {host}:{port} ({exc.strerror or type(exc).__name__})", False
    text = answer[answer.find(START) + 1 : answer.find(END)].decode("utf-8", "replace")
    try:
        ack = parse_message(text.replace("\n", "\r"), find_groups=False)
        code = str(ack.msa.msa_1.value)
        detail = str(ack.msa.msa_3.value) if ack.msa.msa_3 else ""
    except Exception as exc:
        return f"MLLP: unreadable acknowledgement ({type(exc).__name__})", False
    if code in ("AA", "CA"):
        return None, False
    reason = f"HL7 {code}" + (f": {detail[:120]}" if detail else "")
    return reason, code in ("AR", "CR")
