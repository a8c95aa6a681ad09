"""Saliency work: attribution, the heatmap loss, the saliency U-Net and their experiments."""
