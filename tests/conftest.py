"""Test-wide setup. With TRIAGE_BLOCK_TORCH=1, importing torch raises ImportError (the runtime suite is
run that way by `make test` to prove `triage/` works without torch, even where torch is installed).

A failing test's captured output may hold a file name that is not UTF-8 (the hostile-input tests make
such names); pytest-xdist cannot send that report between processes and stops the whole run with an
INTERNALERROR that hides the failure, so the captured sections are made UTF-8 safe first."""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest

BLOCKED = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "fastai")


class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: the runtime must work without torch")
        return None


if os.environ.get("TRIAGE_BLOCK_TORCH") == "1":
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, _BlockTorch())


def _utf8_safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, _utf8_safe(text)) for title, text in report.sections]
    sections = getattr(report.longrepr, "sections", None)
    if isinstance(sections, list):
        sections[:] = [(title, _utf8_safe(text), sep) for title, text, sep in sections]
