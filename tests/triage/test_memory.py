"""The Predictor fixes glibc's mmap threshold so that large per-image arrays go back to the system."""

from __future__ import annotations

import sys

import pytest

from triage.memory import fix_mmap_threshold


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_mmap_threshold_is_set_once_on_linux() -> None:
    assert fix_mmap_threshold() is True
    assert fix_mmap_threshold() is True  # cached: one call per process
