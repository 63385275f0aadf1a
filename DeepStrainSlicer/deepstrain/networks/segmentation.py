"""Segmentation network (CarSON's role): background / RV cavity / LV myocardium / LV cavity per 2D slice.

Input: ``(N, C, H, W)``: each short-axis slice of the heart-centred crop (:mod:`deepstrain.preprocess`,
1.25 mm pixels, intensities normalised to [0, 1]) with its neighbours of the same frame as
channels (``C = 3``: the slice before, the slice, the slice after in the stack; zeros beyond
the stack's ends; built by :func:`context_slices`). The neighbours tell the network where
the slice lies between base and apex, which one slice alone often cannot (the basal ES
slices). Training reverses the neighbour order at random, so the stack's direction does
not matter. Weights stored with another odd ``in_channels`` (1: one slice; 5: two
neighbours on each side, ``deepstrain train segmentation --context 5``) load and run the same way.
Any ``H``, ``W`` works (128 x 128 in use).
Output: ``(N, 4, H, W)`` logits in ACDC label order (0 bg, 1 RV, 2 myocardium, 3 LV cavity).

Weights may hold an ensemble (configuration ``members`` > 1, :class:`SegmentationEnsemble`):
several U-Nets of one configuration whose class probabilities are averaged. Its output is the
logarithm of the mean probabilities, so a softmax of it gives that mean: every caller treats
it as one network. It costs ``members`` times the time of one.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import UNet2d
from .precision import compute_precision

N_CLASSES = 4
CONFIG = {"in_channels": 3, "n_classes": N_CLASSES, "base": 16, "depth": 4, "max_channels": 256}


class SegmentationEnsemble(nn.Module):
    """U-Nets whose softmax probabilities are averaged; ``forward`` returns log(mean probability)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two networks")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = sum(torch.softmax(m(x).float(), dim=1) for m in self.members) / len(self.members)
        return torch.log(p.clamp_min(1e-12))


def build_segmentation_net(members: int = 1, **overrides: int) -> nn.Module:
    """The segmentation U-Net (about 1.9 M parameters with the default configuration); with
    ``members`` > 1, an ensemble of that many (:class:`SegmentationEnsemble`)."""
    if members > 1:
        return SegmentationEnsemble([UNet2d(**{**CONFIG, **overrides}) for _ in range(members)])
    return UNet2d(**{**CONFIG, **overrides})


def input_channels(net: nn.Module) -> int:
    """Number of input channels of a segmentation network (1: one slice; 3: with its two neighbours)."""
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def context_slices(volumes: torch.Tensor, channels: int) -> torch.Tensor:
    """``(N, channels, H, W)`` network input of the ``N = T * Z`` slices of ``volumes`` ``(T, Z, H, W)``.

    Channel ``channels // 2`` is the slice itself; channel ``c`` is slice ``z + c - channels // 2``
    of the same frame, zeros where that lies beyond the stack.
    """
    t, z, h, w = volumes.shape
    half = channels // 2
    padded = torch.zeros((t, z + 2 * half, h, w), dtype=volumes.dtype)
    padded[:, half : half + z] = volumes
    x = torch.stack([padded[:, c : c + z] for c in range(channels)], dim=2)  # (T, Z, C, H, W)
    return x.reshape(t * z, channels, h, w)


CHUNK = 16
"""Slices per forward pass at inference. Chosen by timing 256 slices of 128 x 128 x 3 channels on
2 CPU cores (AMD EPYC, bfloat16): about 5.8 ms per slice in chunks of 8-16, 6.6-10.6 ms in
chunks of 64 (smaller chunks keep the feature maps in the caches). The chunk size changes the
time, not the result beyond float rounding (tested)."""

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-1, -2))
"""Test-time augmentation (:func:`deepstrain.inference.predict`'s ``tta``): the image axes flipped in
each pass (probabilities are averaged)."""


@torch.no_grad()
def segment_slices(net: nn.Module, slices: torch.Tensor, chunk: int = CHUNK,
                   flips: tuple[tuple[int, ...], ...] = ((),), precision: str = "auto") -> torch.Tensor:
    """Class probabilities ``(N, 4, H, W)`` of ``(N, C, H, W)`` network inputs (:func:`context_slices`;
    ``(N, H, W)`` for a one-channel network), in chunks of ``chunk``.

    ``flips``: for each entry, the slices are flipped along those axes (-1 columns, -2 rows),
    segmented, flipped back; the probabilities are averaged. The default is one plain pass;
    :data:`FLIPS` is the 4-pass test-time augmentation (4x the time). ``precision``: see
    :mod:`deepstrain.networks.precision`.
    """
    net.eval()
    flips = FLIPS if flips is None else flips
    out = []
    for s in range(0, slices.shape[0], chunk):
        x = slices[s : s + chunk]
        x = (x[:, None] if x.ndim == 3 else x).float().contiguous(memory_format=torch.channels_last)
        p = None
        for axes in flips:
            with compute_precision(precision):
                logits = net(x.flip(axes) if axes else x)
            q = torch.softmax(logits.float(), dim=1)
            q = q.flip(axes) if axes else q
            p = q if p is None else p + q
        out.append(p / len(flips))
    return torch.cat(out) if out else torch.zeros((0, N_CLASSES) + tuple(slices.shape[-2:]))
