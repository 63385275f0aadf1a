"""Segmentation-consistent motion: a short optimisation that corrects the motion network's field
so that each frame's segmentation, pulled back to end-diastole, matches the ED segmentation.

Why: the motion network under- or over-estimates wall thickening study by study (radial strain
errors of up to 10 points on single phantoms, although its end-point error is 0.6-0.7 mm), while
the segmentation network sees each frame's wall directly. Thickening is what the two disagree on.

What (on the heart-centred crop, all frames at once):

* ``u`` = the network's Lagrangian displacement ``(T, 3, Z, H, W)`` in crop voxel units
  (slice, row, column); ``p`` = the segmentation probabilities ``(T, 4, Z, H, W)``.
* An in-plane correction ``v`` (row and column components; the through-plane component is left
  to the network) is kept at half the in-plane resolution and upsampled bilinearly, so it is
  smooth by construction. It starts at zero.
* Loss per frame ``t != ED``: ``1 - soft Dice`` between ``p_t(X + u + v)`` and ``p_ED(X)`` for
  the classes of :data:`CLASSES` (the myocardium), averaged over the frames, plus ``smoothness`` x
  the squared differences of neighbouring ``v`` values per half-resolution voxel of the crop.
  Adam, ``steps`` iterations, learning rate ``lr`` (voxels per step).
* For speed, ``p_t`` is first moved along the slice axis by one through-plane offset per slice
  (the mean of the network's through-plane displacement over that slice's ED myocardium), so each step samples in plane only (2D); and the optimisation runs on the bounding box
  of the heart (:data:`BOX_MARGIN`), the correction being zero outside it. The returned field keeps
  the network's through-plane component voxel by voxel.
* Deterministic: fixed number of steps, no randomness.

The defaults were chosen on the 20 motion-selection phantoms (seeds 8000-8019) by the smallest
sum of mean |global ESS error| over radial, circumferential and longitudinal (network alone:
6.15), one choice after the other: smoothness 1 / 3 / 10 (myocardium and cavity, 40 steps at
lr 0.1): 4.90 / 4.35 / 5.00; classes (:data:`CLASSES`); then 20 steps at lr 0.2: 4.14. The
benchmark phantoms (9000-9004) were not used. See benchmarks/README.md for the figures. ``deepstrain
analyze`` refines by default (``--no-refine-motion`` turns it off).

After hand edits (the Slicer module's Recompute), :func:`motion_for_labels` runs the refinement
again from the network's field kept in memory (:class:`NetworkMotion`), with every edited frame's
labels in place of the network's probabilities for that frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cine import Geometry
from .preprocess import CropTransform, crop_one_hot, displacement_to_input

STEPS = 20
SMOOTHNESS = 3.0
LEARNING_RATE = 0.2
BOX_MARGIN = 12
"""The optimisation runs on the bounding box of the myocardium of any frame (which encloses the LV)
widened by this many crop pixels (15 mm); the correction is zero outside it."""
CLASSES = (2,)
"""Classes whose probabilities are matched: the myocardium (ACDC label value = channel of the
segmentation probabilities). Chosen on the selection phantoms like the weights above: myocardium
alone 4.18, with the LV cavity 4.35, with the LV cavity and the RV 4.40 (sums of the three mean
|ESS errors|, smoothness 3)."""


def _through_plane_shifted(probs: torch.Tensor, uz: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``probs`` ``(N, C, Z, H, W)`` moved along the slice axis by one offset per slice: the
    ``weight``-weighted mean of the through-plane displacement ``uz`` ``(N, Z, H, W)`` over that
    slice (linear between slices, border slices repeated). The in-plane optimisation then only
    needs 2D sampling. (With the bounding box, a 30-frame study of 10 slices took 4.6 s for the 40
    steps on 2 CPU threads, against 0.8 s per step for trilinear sampling of the whole crop.)"""
    n, c, z, h, w = probs.shape
    dz = (uz * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-6)  # (N, Z)
    pos = (torch.arange(z, dtype=torch.float32)[None] + dz).clamp(0, z - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=z - 1)
    f = (pos - lo.float())[:, None, :, None, None]
    idx = lambda k: k[:, None, :, None, None].expand(n, c, z, h, w)  # noqa: E731
    return (1 - f) * probs.gather(2, idx(lo)) + f * probs.gather(2, idx(hi))


def _sample_inplane(probs: torch.Tensor, u_rc: torch.Tensor) -> torch.Tensor:
    """``probs`` ``(N, C, Z, H, W)`` sampled slice by slice (bilinear, border values) at in-plane
    positions ``X + u`` with ``u_rc`` ``(N, 2, Z, H, W)`` (rows, columns; voxels)."""
    n, c, z, h, w = probs.shape
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    gy = 2 * (rows + u_rc[:, 0]) / max(h - 1, 1) - 1  # (N, Z, H, W)
    gx = 2 * (cols + u_rc[:, 1]) / max(w - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(n * z, h, w, 2)
    flat = probs.permute(0, 2, 1, 3, 4).reshape(n * z, c, h, w)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(n, z, c, h, w).permute(0, 2, 1, 3, 4)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of ``mask`` (..., H, W), widened by ``margin`` (even sizes)."""
    h, w = mask.shape[-2:]
    rows = np.flatnonzero(mask.reshape(-1, h, w).any(axis=(0, 2)))
    cols = np.flatnonzero(mask.reshape(-1, h, w).any(axis=(0, 1)))
    if rows.size == 0:
        return slice(0, h), slice(0, w)

    def span(idx: np.ndarray, n: int) -> slice:
        a, b = max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, n)
        if (b - a) % 2 and b < n:
            b += 1
        elif (b - a) % 2 and a > 0:
            a -= 1
        return slice(a, b)

    return span(rows, h), span(cols, w)


def _upsample(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n, c, z = v.shape[:3]
    up = F.interpolate(v.reshape(n, c * z, *v.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False)
    return up.reshape(n, c, z, h, w)


def refine_displacement(u_vox: np.ndarray, probs: np.ndarray, ed: int, *, steps: int = STEPS,
                        smoothness: float = SMOOTHNESS, lr: float = LEARNING_RATE) -> np.ndarray:
    """The corrected displacement ``(T, 3, Z, H, W)`` (crop voxel units, float32; ED stays zero).

    ``u_vox``: the motion network's field, ``(T, 3, Z, H, W)``, components (slice, row, column) in
    crop voxels; ``probs``: segmentation probabilities ``(T, 4, Z, H, W)`` on the same crop.
    """
    u = torch.from_numpy(np.ascontiguousarray(u_vox, dtype=np.float32))
    p = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    if u.ndim != 5 or u.shape[1] != 3 or p.shape[0] != u.shape[0] or p.shape[2:] != u.shape[2:]:
        raise ValueError(f"displacement {tuple(u.shape)} and probabilities {tuple(p.shape)} do not match")
    t, _, z, h, w = u.shape
    frames = [f for f in range(t) if f != ed]
    out = u.clone()
    if not frames or steps <= 0:
        return out.numpy()
    cls = list(CLASSES)
    heart = p[:, cls].sum(dim=1) > 0.5  # (T, Z, H, W): the matched classes, any frame
    rs, cs = _box(heart.numpy(), BOX_MARGIN)
    hb, wb = rs.stop - rs.start, cs.stop - cs.start
    # box first, then frames and classes: no full-crop copies
    ub = u[:, :, :, rs, cs][frames]
    target = p[ed : ed + 1, cls][:, :, :, rs, cs]
    moving = _through_plane_shifted(p[:, cls][:, :, :, rs, cs][frames].contiguous(), ub[:, 0],
                                    target.sum(dim=1).expand(len(frames), -1, -1, -1))
    fixed = ub[:, 1:]
    v = torch.zeros(len(frames), 2, z, max(hb // 2, 1), max(wb // 2, 1), requires_grad=True)
    n_half = float(len(frames) * 2 * z * max(h // 2, 1) * max(w // 2, 1))
    m1, m2 = torch.zeros_like(v), torch.zeros_like(v)  # Adam's moments (written out: importing torch.optim
    b1, b2, eps = 0.9, 0.999, 1e-8                      # costs about 1.5 s the first time, more than the steps)
    with torch.enable_grad():
        for step in range(1, steps + 1):
            pulled = _sample_inplane(moving, fixed + _upsample(v, hb, wb))
            inter = (pulled * target).sum(dim=(2, 3, 4))
            total = (pulled + target).sum(dim=(2, 3, 4)).clamp_min(1e-6)
            dice_loss = 1.0 - (2.0 * inter / total).mean()
            # squared differences per half-resolution voxel of the WHOLE crop (zero outside the box),
            # so that the weight means the same whatever the box size
            rough = (((v[..., 1:, :] - v[..., :-1, :]) ** 2).sum() + ((v[..., :, 1:] - v[..., :, :-1]) ** 2).sum()) / n_half
            loss = dice_loss + smoothness * rough
            (grad,) = torch.autograd.grad(loss, v)
            with torch.no_grad():
                m1.mul_(b1).add_(grad, alpha=1 - b1)
                m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                v -= lr * (m1 / (1 - b1**step)) / ((m2 / (1 - b2**step)).sqrt() + eps)
    with torch.no_grad():
        corr = _upsample(v.detach(), hb, wb)  # zero outside the box
        for i, f in enumerate(frames):
            out[f, 1:, :, rs, cs] += corr[i]
    return out.numpy()


@dataclass
class NetworkMotion:
    """What the networks said on the crop, kept so the motion can be refined again after hand edits
    (:func:`deepstrain.inference.predict` with ``keep_network_motion=True``; about 5 MB per frame
    of 10 slices, held in memory only)."""

    displacement_vox: np.ndarray
    """``(T, 3, Z, H, W)`` the motion network's field on the crop, crop voxels (slice, row, column)."""
    probabilities: np.ndarray
    """``(T, 4, Z, H, W)`` the segmentation network's class probabilities on the crop."""
    labels: np.ndarray
    """``(T, Z, Y, X)`` uint8 the network's labels on the input grid (to tell which frames were edited)."""
    crop: CropTransform
    geometry: Geometry
    ed: int
    """The motion's reference frame."""

    def edited_frames(self, labels: np.ndarray) -> list[int]:
        """Frames whose ``labels`` ``(T, Z, Y, X)`` differ from the network's."""
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise ValueError(f"labels {labels.shape} do not match the study's {self.labels.shape}")
        return [f for f in range(labels.shape[0]) if not np.array_equal(labels[f], self.labels[f])]


def motion_for_labels(state: NetworkMotion, labels: np.ndarray, *, refine: bool = True) -> np.ndarray:
    """The displacement ``(T, 3, Z, Y, X)`` float32 on the input grid (RAS mm), from the network's field.

    ``refine``: corrected with :func:`refine_displacement`, where each frame whose ``labels`` differ
    from the network's is matched through those labels (one-hot, resampled onto the crop: see
    :func:`deepstrain.preprocess.crop_one_hot`) instead of the network's probabilities; with the
    network's own labels this is exactly what :func:`deepstrain.inference.predict` returned.
    ``refine=False``: the network's field as it is.
    """
    u = state.displacement_vox
    if refine:
        edited = state.edited_frames(labels)
        probs = state.probabilities
        if edited:
            probs = probs.copy()
            probs[edited] = crop_one_hot(np.asarray(labels)[edited], state.crop, probs.shape[1])
        u = refine_displacement(u, probs, state.ed)
    return displacement_to_input(u, state.crop, state.geometry)


REPRODUCTION_TOLERANCE_MM = 0.01
"""Largest difference (mm) at which networks run again are taken to reproduce a stored motion
(:func:`reproduces`). Running them again on the same input with the same weights and arithmetic
gives the same field to float rounding; another CPU's arithmetic (bfloat16 against float32) or
other weights give differences of tenths of a millimetre."""


def reproduces(state: NetworkMotion, displacement: np.ndarray, labels: np.ndarray, *, refined: bool,
               tol_mm: float = REPRODUCTION_TOLERANCE_MM, motion: np.ndarray | None = None) -> tuple[bool, float]:
    """Whether ``state`` (the networks run again) reproduces a stored ``displacement`` ``(T, 3, Z, Y, X)``
    (RAS mm) that was made from the networks' field, refined or not (``refined``).

    Compared on the frames other than ED whose ``labels`` are the networks' own (a hand-edited
    frame's stored motion may have been refined with other contours); each frame's refinement is
    independent of the others, so those frames must agree. Returns (the median over those frames of
    the largest difference is within ``tol_mm``, that median in mm); (False, nan) when every frame
    other than ED was edited. The median, not the maximum: a frame edited, refined and then restored
    to the networks' labels by hand still carries its earlier motion. ``motion``: the field already
    made from ``state`` with :func:`motion_for_labels` (``labels``, the same ``refined``), to
    compare instead of making it again (only its frames not edited are read).

    A refined motion matches every frame to the ED frame, so an edited ED changes every frame's:
    when ED was edited, the stored motion may have been refined with the edited ED (a Recompute
    before the scene was saved) or with the networks' (the edit saved before any Recompute), and
    both are tried.
    """
    displacement = np.asarray(displacement)
    edited = set(state.edited_frames(labels))
    frames = [f for f in range(displacement.shape[0]) if f != state.ed and f not in edited]
    if not frames:
        return False, float("nan")

    def median_mm(fresh: np.ndarray) -> float:
        return float(np.median([float(np.abs(fresh[f] - displacement[f]).max()) for f in frames]))

    median = median_mm(motion_for_labels(state, labels, refine=refined) if motion is None else motion)
    if refined and state.ed in edited and not median <= tol_mm:
        median = min(median, median_mm(motion_for_labels(state, state.labels, refine=True)))
    return median <= tol_mm, median
