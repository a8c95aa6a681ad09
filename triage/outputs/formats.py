"""The output formats: one registry for the CLI, the writer, the readers and the services.

Each format is one kind of file written per image (``triage/cascade/write.py``). A format that draws
the radiograph (``picture``) needs the image at the overlay's size after preprocessing; the readers
keep only that much of the decoded pixels (``triage/cascade/items.py: pixels_to_keep``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class OutputFormat:
    name: str  # the value of ``--format``
    writes: str  # what it writes, per image (help text)
    picture: bool  # draws the radiograph: needs the image kept at the overlay's size


REGISTRY: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("png", "overlay PNG (+ mask PNG and saliency panel)", picture=True),
        OutputFormat("seg", "DICOM SEG of the mask (positive images)", picture=False),
        OutputFormat("sc", "DICOM Secondary Capture of the overlay", picture=True),
        OutputFormat("sr", "DICOM Structured Report of the decision", picture=False),
        OutputFormat(
            "saliency",
            "the saliency model's map as a DICOM Secondary Capture (bundles with one)",
            picture=False,
        ),
    )
}
FORMATS: tuple[str, ...] = tuple(REGISTRY)  # every valid name, in the order help and errors list them
PICTURE_FORMATS = frozenset(name for name, f in REGISTRY.items() if f.picture)
PREDICT_DEFAULT = frozenset({"png", "seg", "sc", "saliency"})  # `triage predict`
SERVICE_DEFAULT = frozenset({"png", "seg", "sc", "sr"})  # `triage watch` / `triage listen` (forwardable SR)
HELP = "Comma-separated outputs: " + ", ".join(f"{f.name} ({f.writes})" for f in REGISTRY.values()) + "."


def check_formats(formats: Iterable[str]) -> frozenset[str]:
    """``formats`` as a frozenset; ValueError naming the unknown ones and the valid names."""
    chosen = frozenset(formats)
    bad = sorted(chosen - set(FORMATS))
    if bad:
        raise ValueError(f"unknown output formats {bad}; valid: {', '.join(FORMATS)}")
    return chosen


def parse_formats(text: str) -> frozenset[str]:
    """The value of ``--format`` ("png,seg"; blanks ignored), checked by :func:`check_formats`."""
    return check_formats(part.strip() for part in text.split(",") if part.strip())


def format_option(formats: Iterable[str]) -> str:
    """``formats`` as a ``--format`` value, in registry order (the inverse of :func:`parse_formats`)."""
    chosen = set(formats)
    return ",".join(name for name in FORMATS if name in chosen)
