"""The saliency choices and options, declared once: the values the trainers accept (``Method``,
``MapLoss``, ...) and the Typer options of ``triage train classifier --heatmap-*``, ``--corruption-augment``
and ``triage train saliency``. Imports only typer, so that ``triage --help`` stays fast and torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

from training.options import Preset

Method = Literal["hirescam", "gradcam"]
METHODS: tuple[Method, ...] = ("hirescam", "gradcam")
ClassChoice = Literal["predicted", "true"]
CLASS_CHOICES: tuple[ClassChoice, ...] = ("predicted", "true")
Mode = Literal["irrelevant", "relevant"]
MODES: tuple[Mode, ...] = ("irrelevant", "relevant")
Region = Literal["lungs", "lesion"]
REGIONS: tuple[Region, ...] = ("lungs", "lesion")
TargetKind = Literal["heatmap", "lesion", "gaze"]
TARGETS: tuple[TargetKind, ...] = ("heatmap", "lesion", "gaze")
MapLoss = Literal["bce", "kl", "mse"]
MAP_LOSSES: tuple[MapLoss, ...] = ("bce", "kl", "mse")

CorruptionAugment = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, help="Probability of one random robustness corruption per training image (0: off)."
    ),
]


@dataclass(frozen=True)
class SaliencyOptions:
    """``--heatmap-*`` and ``--corruption-augment`` of ``triage train ROLE`` (docs/saliency.md)."""

    heatmap_loss: Annotated[
        Method | None, typer.Option(help="Classifier: add the heatmap loss on this attribution.")
    ] = None
    heatmap_weight: Annotated[float, typer.Option(min=0.0, help="Lambda of the heatmap loss.")] = 1.0
    heatmap_class: Annotated[ClassChoice, typer.Option(help="Class whose map is penalised.")] = "predicted"
    heatmap_mode: Annotated[
        Mode, typer.Option(help="Penalise mass outside the region (irrelevant) or missing inside (relevant).")
    ] = "irrelevant"
    heatmap_region: Annotated[
        Region, typer.Option(help="Lung-field masks (lungs) or pneumothorax masks (lesion).")
    ] = "lungs"
    heatmap_layer: Annotated[
        str | None, typer.Option(help="Layer to explain (a module name); default: the last feature map.")
    ] = None
    corruption_augment: CorruptionAugment = 0.0


@dataclass(frozen=True)
class SaliencyTarget:
    """What ``triage train saliency`` learns: the target heatmaps and the mixed objective."""

    target: Annotated[
        TargetKind,
        typer.Option(
            help="Target heatmaps: the data set's reading heatmaps, blurred pneumothorax masks (lesion) or "
            "eye-gaze fixations (gaze, with --gaze-csv)."
        ),
    ] = "heatmap"
    gaze_csv: Annotated[
        Path | None,
        typer.Option(help="Eye-gaze fixations: CSV image_id,x,y[,weight] in source pixels."),
    ] = None
    target_sigma: Annotated[
        float, typer.Option(min=0.0, help="Gaussian sigma in source pixels (lesion, gaze).")
    ] = 150.0
    map_loss: Annotated[MapLoss, typer.Option(help="Decoder loss against the target.")] = "bce"
    alpha: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="alpha*(decoder vs target) + (1-alpha)*(head CAM vs target)."),
    ] = 1.0
    cls_weight: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gamma in gamma*L_cls + (1-gamma)*L_map, in (0, 1].")
    ] = 0.5
    staged: Annotated[
        int,
        typer.Option(min=0, help="First N epochs with the encoder frozen (decoder learns first); 0: off."),
    ] = 0


@dataclass(frozen=True)
class DualEncoderOptions:
    """``triage train saliency --dual-encoder CLASSIFIER_RUN``: seed 004's fused model (stage 3)."""

    dual_encoder: Annotated[
        Path | None,
        typer.Option(
            help="A classifier run (same input size and normalization): after the U-Net, train a head on "
            "its frozen features and the U-Net's decoder features; the run exports as the fused model."
        ),
    ] = None
    fusion_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the fused head.")] = 5
    fusion_hidden: Annotated[int, typer.Option(min=1, help="Channels of the fused head's 1x1 conv.")] = 32


@dataclass(frozen=True)
class ShortcutOptions:
    """``triage shortcut-experiment``: CE vs heatmap-loss classifiers on drain-confounded data."""

    out: Annotated[Path, typer.Option(help="Experiment folder: data/, runs/, results.md, results.json.")]
    models: Annotated[int, typer.Option(min=1, help="Classifiers per group (CE, heatmap loss).")] = 5
    preset: Annotated[Preset, typer.Option(help="Classifier preset.")] = "small"
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the preset's).")] = None
    heatmap_weight: Annotated[float, typer.Option(min=0.0, help="Lambda of the heatmap loss.")] = 1.0
    train_studies: Annotated[int, typer.Option(min=2, help="Training studies (drain in 90 % / 2 %).")] = 500
    test_studies: Annotated[
        int, typer.Option(min=2, help="Test studies (drain in 50 %, independent of the label).")
    ] = 400
    cache: Annotated[Path | None, typer.Option(help="Grid cache folder.")] = None
    quiet: Annotated[bool, typer.Option(help="No per-epoch logs.")] = False
