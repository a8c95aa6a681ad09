"""Test-wide setup. With TRIAGE_BLOCK_TORCH=1, importing torch raises ImportError (the runtime suite is
run that way by `make test` to prove `triage/` works without torch, even where torch is installed)."""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

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
