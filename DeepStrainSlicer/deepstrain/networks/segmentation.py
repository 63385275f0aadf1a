"""Segmentation network (CarSON's role): background / RV cavity / LV myocardium / LV cavity per 2D slice.

Input: ``(N, 1, H, W)`` slices of the heart-centred crop (:mod:`deepstrain.preprocess`,
1.25 mm pixels, intensities normalised to [0, 1]); any ``H``, ``W`` works (128 x 128 in use).
Output: ``(N, 4, H, W)`` logits in ACDC label order (0 bg, 1 RV, 2 myocardium, 3 LV cavity).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import UNet2d
from .precision import compute_precision

N_CLASSES = 4
CONFIG = {"in_channels": 1, "n_classes": N_CLASSES, "base": 16, "depth": 4, "max_channels": 256}


def build_segmentation_net(**overrides: int) -> nn.Module:
    """The segmentation U-Net (about 1.9 M parameters with the default configuration)."""
    return UNet2d(**{**CONFIG, **overrides})


FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-1, -2))
"""Test-time augmentation (``tta=True``): the image axes flipped in each pass (probabilities are averaged)."""


@torch.no_grad()
def segment_slices(net: nn.Module, slices: torch.Tensor, chunk: int = 64,
                   flips: tuple[tuple[int, ...], ...] = ((),), precision: str = "auto") -> torch.Tensor:
    """Class probabilities ``(N, 4, H, W)`` of ``(N, H, W)`` normalised slices, in chunks of ``chunk``.

    ``flips``: for each entry, the slices are flipped along those axes (-1 columns, -2 rows),
    segmented, flipped back; the probabilities are averaged. The default is one plain pass;
    :data:`FLIPS` is the 4-pass test-time augmentation (4x the time). ``precision``: see
    :mod:`deepstrain.networks.precision`.
    """
    net.eval()
    flips = FLIPS if flips is None else flips
    out = []
    for s in range(0, slices.shape[0], chunk):
        x = slices[s : s + chunk, None].float().contiguous(memory_format=torch.channels_last)
        p = None
        for axes in flips:
            with compute_precision(precision):
                logits = net(x.flip(axes) if axes else x)
            q = torch.softmax(logits.float(), dim=1)
            q = q.flip(axes) if axes else q
            p = q if p is None else p + q
        out.append(p / len(flips))
    return torch.cat(out) if out else torch.zeros((0, N_CLASSES) + tuple(slices.shape[-2:]))
