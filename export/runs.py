"""Training run folders → PyTorch networks ready to export, with the checks a user needs.

A run is what ``triage train`` writes (:mod:`training.run_format`): ``model.json`` (the run card) and the
checkpoint it names. The bundle role comes from the run card: ``classifier``; ``segmenter`` (or
``baseline``, a U-Net trained on all images, accepted as the segmenter and noted in the provenance);
``saliency`` (optional).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from export.errors import ExportError
from training.run_format import RunCard, build_network, read_run_card

BUNDLE_ROLE = {
    "classifier": "classifier",
    "segmenter": "segmenter",
    "baseline": "segmenter",
    "saliency": "saliency",
}


@dataclass
class Run:
    """One run folder, loaded: its card and its network (eval mode, CPU, float32)."""

    path: Path
    card: RunCard
    module: nn.Module

    @property
    def role(self) -> str:
        """The bundle role: classifier, segmenter or saliency."""
        return BUNDLE_ROLE[self.card.role]


def _first_conv_channels(module: nn.Module) -> int | None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return int(layer.in_channels)
    return None


def load_run(path: Path, role: str | None = None) -> Run:
    """Read ``path``/model.json, rebuild the network, load its checkpoint; ExportError naming the fault
    (also when ``role`` is given and the run is not of that bundle role)."""
    path = Path(path)
    try:
        card = read_run_card(path)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if role is not None and BUNDLE_ROLE.get(card.role) != role:
        raise ExportError(f"{path} is a {card.role} run, not a {role} run (triage train {role})")
    what = f"{card.role} run {path}"
    ckpt = path / card.checkpoint
    if not ckpt.is_file():
        raise ExportError(
            f"{what} has no checkpoint {card.checkpoint} (training writes it at the end of an epoch; "
            f"export a run that has trained at least one epoch)"
        )
    if card.channels != card.arch.in_chans:
        raise ExportError(
            f"{what}: the run card says {card.channels} input channel(s) but the network is built with "
            f"in_chans={card.arch.in_chans}"
        )
    try:
        module = build_network(card)
    except ValueError as exc:
        raise ExportError(f"{what}: {exc}") from exc
    try:
        state = load_file(str(ckpt))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ExportError(f"{what}: {ckpt.name} is not a readable safetensors file ({exc})") from exc
    own = module.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        key = wrong[0]
        raise ExportError(
            f"{what}: {ckpt.name} does not fit the architecture in model.json: {key} has shape "
            f"{tuple(state[key].shape)}, the network {tuple(own[key].shape)} ({len(wrong)} tensor(s) differ)"
        )
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ExportError(
            f"{what}: {ckpt.name} does not fit the architecture in model.json: "
            f"{len(missing)} missing tensor(s) (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    module.load_state_dict(state, strict=True)
    module.eval().float()
    channels = _first_conv_channels(module)
    if channels is not None and channels != card.channels:
        raise ExportError(
            f"{what}: the network's first convolution takes {channels} channel(s), "
            f"the run card says {card.channels}"
        )
    return Run(path, card, module)


def assign_roles(runs: list[Run]) -> dict[str, Run]:
    """{bundle role: run}: exactly one classifier and one segmenter, at most one saliency run."""
    by_role: dict[str, list[Run]] = {}
    for run in runs:
        by_role.setdefault(run.role, []).append(run)
    for role, found in by_role.items():
        if len(found) > 1:
            raise ExportError(
                f"{len(found)} {role} runs given ({', '.join(str(r.path) for r in found)}); "
                f"a bundle holds one"
            )
    for role in ("classifier", "segmenter"):
        if role not in by_role:
            have = {r.role: str(r.path) for r in runs}
            raise ExportError(
                f"no {role} run among the runs given ({have}); a bundle needs a classifier "
                f"run and a segmenter run (and optionally a saliency run)"
            )
    roles = {role: found[0] for role, found in by_role.items()}
    cls, seg = roles["classifier"], roles["segmenter"]
    if cls.card.channels != seg.card.channels:
        raise ExportError(
            f"mismatched input channels: the classifier ({cls.path}) takes {cls.card.channels}, "
            f"the segmenter ({seg.path}) takes {seg.card.channels}; both must read the image the same way"
        )
    return roles


def dummy_input(run: Run, batch: int = 2) -> torch.Tensor:
    h, w = run.card.input_size
    return torch.zeros(batch, run.card.channels, h, w)
