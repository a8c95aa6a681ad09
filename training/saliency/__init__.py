"""Saliency training, attribution and evaluation: the saliency U-Net (``triage train saliency``), HiResCAM /
Grad-CAM attribution, the heatmap loss, the shortcut experiment and their command bodies."""
