"""Centring network (VCN's role): finds the LV on the whole field of view.

A small 2D U-Net on every slice of the full field of view resampled to ``CENTRING_SPACING_MM``
predicts the LV (cavity + myocardium) mask. The LV centre is the probability-weighted centroid
of the largest 3D connected component of the mask (slices connected through the slice axis).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage

from .blocks import UNet2d

CENTRING_SPACING_MM = 2.5
"""In-plane pixel size (mm) of the centring network's input."""
CONFIG = {"in_channels": 1, "n_classes": 2, "base": 8, "depth": 4, "max_channels": 128}


def build_centring_net(**overrides: int) -> nn.Module:
    """The centring U-Net (about 0.3 M parameters with the default configuration)."""
    return UNet2d(**{**CONFIG, **overrides})


@torch.no_grad()
def lv_probability(net: nn.Module, slices: np.ndarray, chunk: int = 32) -> np.ndarray:
    """LV (cavity + myocardium) probability ``(Z, H, W)`` of normalised slices ``(Z, H, W)``."""
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    out = [torch.softmax(net(x[s : s + chunk, None]), dim=1)[:, 1] for s in range(0, x.shape[0], chunk)]
    return torch.cat(out).numpy()


def lv_centre_from_probability(prob: np.ndarray, threshold: float = 0.5) -> tuple[float, float] | None:
    """Row/column (pixels of ``prob``) of the LV centre, or None when no pixel exceeds ``threshold``.

    Centroid of the probability over the largest 3D connected component of ``prob > threshold``.
    """
    mask = prob > threshold
    if not mask.any():
        return None
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    w = np.where(mask, prob, 0.0)
    _, r, c = ndimage.center_of_mass(w)
    return float(r), float(c)
