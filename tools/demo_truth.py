"""What the demo flagged against the truth: the worklist's studies (``positive``) against the synthetic
studies' labels (``metadata.csv``), with the size stratum and drain of each missed or false study.

Usage: python tools/demo_truth.py WORKLIST_CSV METADATA_CSV
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(worklist: Path, metadata: Path) -> int:
    truth: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(metadata.open(newline="", encoding="utf-8")):
        study = truth.setdefault(row["study_uid"], {"label": "0", "size": "none", "drain": "0"})
        if row["label"] == "1":
            study.update(label="1", size=row["size_stratum"])
        if row["drain"] == "1":
            study["drain"] = "1"
    flagged = {
        r["study_uid"]: r["positive"].strip().lower() in ("1", "true", "yes")
        for r in csv.DictReader(worklist.open(newline="", encoding="utf-8"))
    }
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    notes = []
    for uid, t in truth.items():
        positive, called = t["label"] == "1", flagged.get(uid, False)
        key = ("t" if positive == called else "f") + ("p" if called else "n")
        counts[key] += 1
        if key in ("fp", "fn"):
            what = "missed" if key == "fn" else "false alarm"
            notes.append(f"  {what}: size {t['size']}, drain {'yes' if t['drain'] == '1' else 'no'}")
    positives = counts["tp"] + counts["fn"]
    print(
        f"flagged {counts['tp']} of {positives} studies with a pneumothorax, "
        f"{counts['fp']} false alarm(s) among {counts['fp'] + counts['tn']} without one"
    )
    print("\n".join(notes))
    missing = set(truth) - set(flagged)
    if missing:
        print(f"{len(missing)} study(ies) absent from the worklist (failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
