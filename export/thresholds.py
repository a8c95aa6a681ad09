"""Where each decision threshold of the bundle comes from.

Sources, in order: an explicit ``--thresholds FILE`` (JSON with any of the keys below, and optionally
``chosen_by``), then the runs' ``model.json`` ``thresholds`` blocks (the threshold search of
``triage train`` writes them: ``gate`` into the classifier run, the triplet into the segmenter run, or
all of them into either). Two runs that disagree on a value are an error. A key that no source gives is
an error too, unless the user accepts the documented defaults with ``--default-thresholds``
(:data:`DOCUMENTED_DEFAULTS`, docs/export.md). The card records the source of every key in
``thresholds.chosen_by``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.runs import Run

KEYS = ("gate", "top", "min_area", "bottom", "min_component")
INTS = ("min_area", "min_component")

# The SIIM-ACR first place's triplet (top 0.75, min_area 2000 px, bottom 0.3, components ≥ 100 px, all at
# 1024 px), with the pixel counts scaled to the segmenter's grid, and a gate of 0.5. Only with
# --default-thresholds, never silently: they were not chosen on the user's data.
DOCUMENTED_DEFAULTS: dict[str, float] = {
    "gate": 0.5,
    "top": 0.75,
    "min_area": 2000,
    "bottom": 0.3,
    "min_component": 100,
}
DEFAULTS_GRID = 1024


def _check(key: str, value: Any, where: str) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{where}: threshold {key}={value!r} is not a number") from exc
    if key in INTS:
        if number < 0 or number != int(number):
            raise ExportError(f"{where}: threshold {key}={value!r} must be a whole number of pixels >= 0")
        return int(number)
    if not 0.0 <= number <= 1.0:
        raise ExportError(f"{where}: threshold {key}={value!r} must be a probability in [0, 1]")
    return number


def _block(raw: dict[str, Any], where: str) -> dict[str, tuple[float | int, dict[str, Any]]]:
    chosen = raw.get("chosen_by", {})
    out = {}
    for key in KEYS:
        if key in raw:
            how = chosen.get(key, chosen) if isinstance(chosen, dict) else {"note": str(chosen)}
            if isinstance(how, dict) and set(how) & set(KEYS):  # per-key dict without this key
                how = {}
            out[key] = (
                _check(key, raw[key], where),
                {**(how if isinstance(how, dict) else {}), "source": where},
            )
    return out


def resolve(
    roles: dict[str, Run], thresholds_file: Path | None, accept_defaults: bool, seg_grid: tuple[int, int]
) -> dict[str, Any]:
    """The card's ``thresholds`` block; ExportError naming a conflict or what is missing."""
    found: dict[str, tuple[float | int, dict[str, Any]]] = {}
    for role in ("classifier", "segmenter", "saliency"):
        run = roles.get(role)
        if run is None or not run.card.thresholds:
            continue
        where = f"{role} run {run.path}/model.json"
        for key, (value, how) in _block(run.card.thresholds, where).items():
            if key in found and found[key][0] != value:
                raise ExportError(
                    f"threshold {key} is {found[key][0]} in {found[key][1]['source']} but {value} "
                    f"in {where}; pass --thresholds FILE to choose"
                )
            found.setdefault(key, (value, how))
    if thresholds_file is not None:
        try:
            raw = json.loads(Path(thresholds_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"--thresholds {thresholds_file}: not a readable JSON file ({exc})") from exc
        if not isinstance(raw, dict):
            raise ExportError(
                f"--thresholds {thresholds_file}: must hold a JSON object with keys {list(KEYS)}"
            )
        raw = raw.get("thresholds", raw)
        found.update(_block(raw, f"--thresholds {thresholds_file}"))
    missing = [k for k in KEYS if k not in found]
    if missing and not accept_defaults:
        raise ExportError(
            f"no value for threshold(s) {missing} in the runs' model.json or --thresholds; run the threshold "
            f"search (triage train ...), pass --thresholds FILE, or accept the documented defaults with "
            f"--default-thresholds (docs/export.md)"
        )
    scale = (seg_grid[0] * seg_grid[1]) / DEFAULTS_GRID**2
    for key in missing:
        value = DOCUMENTED_DEFAULTS[key]
        note = "SIIM-ACR 1st place triplet" if key != "gate" else "P >= 0.5"
        if key in INTS:
            value = max(1, round(value * scale))
            grid = f"{seg_grid[0]}×{seg_grid[1]}"
            note += f" ({DOCUMENTED_DEFAULTS[key]:g} px at {DEFAULTS_GRID}² scaled to the {grid} grid)"
        found[key] = (
            value,
            {"source": "documented default (--default-thresholds), not chosen on data", "note": note},
        )
    block: dict[str, Any] = {k: found[k][0] for k in KEYS}
    block["grid"] = "model"
    block["chosen_by"] = {k: found[k][1] for k in KEYS}
    return block
