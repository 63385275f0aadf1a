"""Train the centring network on ACDC (``deepstrain train centring``).

Whole field-of-view slices at 2.5 mm, warped into 128 x 128 with large shifts, any rotation,
scaling and flips (so off-centre hearts are found); target: the LV mask (labels 2+3). Loss:
cross-entropy + soft Dice. Validation: distance (mm) between the predicted LV centre and the
manual one (centroid of labels 2+3) on the ED frame of each validation patient, whole field of view.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..networks.centring import CENTRING_SPACING_MM, CONFIG, build_centring_net, lv_centre_from_probability, lv_probability
from . import data as D
from . import DEFAULTS, add_training_arguments
from .segmentation import soft_dice_loss, train_loop

NAME = "centring"


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y) + soft_dice_loss(logits, y, 2)


def centring_errors_mm(net: nn.Module, val: list[dict]) -> list[float]:
    """Centre error (mm) on the ED frame's whole field of view of each cached patient (inf if none found)."""
    errs = []
    for d in val:
        prob = lv_probability(net, d["cen_img"][0].astype(np.float32))
        c = lv_centre_from_probability(prob)
        _, r, col = np.nonzero(d["cen_mask"][0])
        if c is None:
            errs.append(float("inf"))
        else:
            errs.append(float(np.hypot(c[0] - r.mean(), c[1] - col.mean()) * CENTRING_SPACING_MM))
    net.train()
    return errs


def _val(net: nn.Module, val: list[dict]) -> dict:
    e = centring_errors_mm(net, val)
    return {"val_centre_error_mean_mm": float(np.mean(e)), "val_centre_error_max_mm": float(np.max(e))}


def main(args: argparse.Namespace) -> dict:
    """Train (or resume) the centring network with the options of :func:`deepstrain.training.add_training_arguments`."""
    return train_loop(args, name=NAME, build=build_centring_net, config=dict(CONFIG),
                      batch_fn=lambda data, rng, b: D.centring_batch(data, rng, b, size=args.crop),
                      val_fn=_val, loss_fn=_loss)


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(ap, **DEFAULTS[NAME])
    main(ap.parse_args())
