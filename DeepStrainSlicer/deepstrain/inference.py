"""The networks on a whole study: LV centring, heart-centred crop, segmentation, motion, back to the input grid.

:func:`predict` runs, for a :class:`~deepstrain.cine.Cine`:

1. Intensity normalisation of every frame (:func:`deepstrain.preprocess.normalize_intensity`).
2. Centring: the centring network on the whole field of view of the ED frame at 2.5 mm gives a
   first LV centre; the segmentation network on the ED frame cropped there refines it to the
   centroid of its LV (labels 2+3). The crop (128 x 128 at 1.25 mm) is centred on that point.
3. Segmentation of all frames in one batched pass over the ``T * Z`` slices (chunks of 16), each
   slice with its two neighbours of the same frame as extra channels
   (:func:`deepstrain.networks.segmentation.context_slices`).
   Class probabilities are mapped back to the input grid (linear), then argmax.
   Test-time flips (:data:`deepstrain.networks.segmentation.FLIPS`: plain, left-right, up-down,
   both; probabilities averaged; 4x the time of a frame) are used, by default, on the ED and ES
   frames only (``tta="ed-es"``): those two frames give every volume, the EF, the LV mass and
   the myocardium that strain is measured in, and flipping them costs about 0.5 s on a 30-frame
   study, where flipping every frame (``tta="all"``) would more than double the network time.
   ED and ES are the given frames, else the frames of largest and smallest LV cavity of the given
   segmentation (``refine_with``) or, without one, of the networks' labels: found again after the
   flips, and a frame that has become ED or ES is flipped too, until both are flipped frames
   (:func:`key_frames_flipped`). The motion's reference frame is that ED. The other frames are segmented once, so
   their labels can differ by a voxel at the edges from what the flips would give. The 2D networks run
   with their batch norms folded into the convolutions (:func:`deepstrain.networks.blocks.fuse_batchnorm`)
   in channels-last memory layout: same results to float rounding, about twice as fast on a CPU.
   With ``precision="auto"`` the networks compute in bfloat16 on CPUs that have it natively
   (:mod:`deepstrain.networks.precision`), about twice as fast again.
4. Post-processing: in each frame, each class (RV, myocardium, LV cavity) keeps only its largest
   3D connected component (26-connectivity: faces, edges and corners, across slices too); the
   voxels removed become background.
5. Motion (optional): :func:`deepstrain.networks.motion.estimate_motion` from the ED crop to every
   frame's crop, converted to RAS mm on the input grid (:func:`deepstrain.preprocess.displacement_to_input`).

The networks were trained on stacks stored base first (ACDC, the phantoms), and they see the slice
axis as it is stored: the segmentation network's neighbour channels in that order, the motion
network's through-plane output along it. So the same study stored apex first (a reader may reverse
the slice order: 3D Slicer does for a left-handed NIfTI) gave other numbers (UK Biobank's
subject: EF 74.8 against 75.0 %). A stack stored apex first (base and apex from the ED labels of a
first pass, :func:`slices_run_apex_first`) is therefore analysed again reversed, as the same world,
and everything turned back (the through-plane component of the motion negated): both orders give
the same result to float rounding, at the cost of a second centring and segmentation for stacks
stored apex first.

ED is ``cine.ed`` when the input says so, else the frame with the largest LV cavity (step 3).
Deterministic: networks in eval mode, no randomness, and CPU kernels that give the same result on
the same input (checked by the tests and ``benchmarks/end_to_end.py``). torch's
``use_deterministic_algorithms`` switch is not used: it changes nothing for these CPU kernels and its
first call imports torch's compiler stack (about 1.5 s).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .cine import Cine, Geometry, flip_axis, lost_spacing_hint
from .errors import InputError
from .networks import TTA_MODES
from .networks.blocks import fuse_batchnorm
from .networks.centring import CENTRING_SPACING_MM, build_centring_net, lv_centre_from_probability, lv_probability
from .networks.segmentation import (FLIPS, N_CLASSES, build_segmentation_net, context_slices, input_channels,
                                    segment_slices)
from .preprocess import (
    CROP_SIZE,
    TARGET_SPACING_MM,
    CropTransform,
    crop_image,
    crop_transform,
    full_view_transform,
    normalize_intensity,
    uncrop_probabilities,
)
from .refinement import NetworkMotion, motion_for_labels
from .weights import cache_key, load_network

Progress = Callable[[float, str], None]


@dataclass
class Prediction:
    """What the networks say about a study (arrays on the input grid, conventions of :mod:`deepstrain.cine`)."""

    labels: np.ndarray
    """``(T, Z, Y, X)`` uint8, ACDC label values."""
    displacement: np.ndarray | None
    """``(T, 3, Z, Y, X)`` float32, RAS mm, Lagrangian from ED; None without motion."""
    lv_centre: np.ndarray
    """RAS (mm) of the crop centre (the LV centre) in the middle slice."""
    lv_centre_voxel: tuple[float, float]
    """Row/column (input voxels) of the crop centre."""
    crop: CropTransform
    """The input-grid <-> crop map."""
    ed: int
    """ED frame (index into the cine) used as the motion reference."""
    motion_slice_order: str | None = None
    """``"as stored"`` or ``"reversed"`` (the stack is stored apex first; step 5); None without motion."""
    network_motion: NetworkMotion | None = None
    """With ``keep_network_motion=True``: what :func:`deepstrain.refinement.motion_for_labels` needs
    to refine the motion again after hand edits."""
    flipped_frames: tuple[int, ...] = ()
    """Frames segmented with test-time flips (step 3), sorted."""


_NETS: dict[tuple, torch.nn.Module] = {}


def _network(name: str, weights_dir: Path | None) -> torch.nn.Module:
    key = cache_key(name, weights_dir)  # a file changed on disk is loaded and verified again
    if key not in _NETS:
        build = build_segmentation_net if name == "segmentation" else build_centring_net
        net = fuse_batchnorm(load_network(name, build, weights_dir))
        _NETS[key] = net.to(memory_format=torch.channels_last)
    return _NETS[key]


_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def largest_components(labels: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Keep, per frame and per foreground class, the largest 3D connected component of ``labels`` (..., Z, Y, X).

    Voxels touching by a face, an edge or a corner are connected (26-connectivity): short-axis
    slices are acquired in separate breath-holds and are often shifted in-plane against each
    other, so a thin apical ring may touch the slice above only diagonally. With face
    connectivity such rings were removed (ACDC validation, see benchmarks/README.md). The work is done on
    the bounding box of the foreground (same result, a fraction of the voxels).
    """
    out = np.array(labels, dtype=np.uint8, copy=True)
    flat = out.reshape((-1,) + out.shape[-3:])
    fg = (flat > 0).any(axis=(0, 1))
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return out
    box = flat[:, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # a view: edits land in ``out``
    for f in box:
        for k in range(1, n_classes):
            m = f == k
            lab, n = ndimage.label(m, structure=_CONNECTIVITY)
            if n > 1:
                sizes = ndimage.sum_labels(m, lab, index=np.arange(1, n + 1))
                f[m & (lab != 1 + int(np.argmax(sizes)))] = 0
    return out


def _segment(net: torch.nn.Module, crops: np.ndarray, flips: tuple[tuple[int, ...], ...] = ((),),
             precision: str = "auto") -> np.ndarray:
    """Class probabilities ``(T, C, Z, H, W)`` of normalised crops ``(T, Z, H, W)``, averaged over ``flips``
    (:func:`deepstrain.networks.segmentation.segment_slices`)."""
    t, z, h, w = crops.shape
    x = context_slices(torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)), input_channels(net))
    p = segment_slices(net, x, flips=flips, precision=precision).numpy()
    # contiguous: every later step reads one class (or one frame) at a time (3.5x faster uncropping)
    return np.ascontiguousarray(p.reshape(t, z, N_CLASSES, h, w).transpose(0, 2, 1, 3, 4))


def _lv_extremes(labels: np.ndarray, ed: int | None, es: int | None) -> tuple[int, int]:
    """ED and ES: ``ed`` / ``es`` where given, else the frames of largest / smallest LV cavity
    (label 3) in ``labels`` ``(T, Z, Y, X)``, the earliest on ties (as :func:`deepstrain.volumetrics.find_ed_es`)."""
    lv = (labels == 3).reshape(labels.shape[0], -1).sum(axis=1)
    return (int(np.argmax(lv)) if ed is None else int(ed)), (int(np.argmin(lv)) if es is None else int(es))


def key_frames_flipped(net: torch.nn.Module, crops: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                       t: CropTransform, ed: int | None, es: int | None, precision: str = "auto",
                       frames: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Segment ED and ES again with test-time flips, in place in ``probs`` (the plain pass) and
    ``labels`` (see the module docstring).

    ED / ES: ``ed`` / ``es`` where given, else found from ``labels`` after each round of flips,
    until both are flipped frames. ``frames``: flip exactly these instead (to repeat an earlier
    run). Returns the frames flipped, sorted.
    """
    done: set[int] = set()
    while True:
        todo = sorted(set(frames) - done) if frames is not None else sorted(set(_lv_extremes(labels, ed, es)) - done)
        if not todo:
            return tuple(sorted(done))
        # the plain pass is in ``probs`` already: the three flipped passes are added to it (mean of the four)
        flipped = _segment(net, crops[todo], flips=FLIPS[1:], precision=precision)
        probs[todo] = (probs[todo] + (len(FLIPS) - 1) * flipped) / len(FLIPS)
        labels[todo] = largest_components(uncrop_probabilities(probs[todo], t))
        done.update(todo)


def slices_run_apex_first(labels_ed: np.ndarray, geometry) -> bool:
    """Whether the slice index of ``labels_ed`` ``(Z, Y, X)`` runs from apex to base.

    Base and apex as :func:`deepstrain.strain.cardiac_frame` orients the long axis (RV area, then
    LV cavity area, ...); False when that cannot be built (no LV), so the stored order is kept.
    """
    from .strain import cardiac_frame

    try:
        frame = cardiac_frame(labels_ed, geometry)
    except ValueError:
        return False
    normal = geometry.direction[:, 0] / np.linalg.norm(geometry.direction[:, 0])
    return bool(frame.long_axis @ normal < 0)


def _motion_base_first(ref: np.ndarray, crops: np.ndarray, spacing_crop: np.ndarray, reverse: bool,
                       **kw) -> np.ndarray:
    """:func:`deepstrain.networks.motion.estimate_motion` (mm, ``(T, 3, Z, H, W)``), given the stack
    base first: reversed in and out when ``reverse`` (the slice component negated)."""
    from .networks.motion import estimate_motion

    if not reverse:
        return estimate_motion(ref, crops, spacing_crop, **kw)
    u = estimate_motion(np.ascontiguousarray(ref[::-1]), np.ascontiguousarray(crops[:, ::-1]), spacing_crop, **kw)
    u = np.ascontiguousarray(u[:, :, ::-1])
    u[:, 0] *= -1
    return u


def find_lv_centre(norm_frame: np.ndarray, spacing: np.ndarray, *, weights_dir: Path | None = None,
                   source: str = "input", precision: str = "auto") -> tuple[float, float]:
    """Input voxel (row, col) of the LV centre of one normalised frame ``(Z, Y, X)`` (steps 2 of :func:`predict`)."""
    tf = full_view_transform(norm_frame.shape, spacing, CENTRING_SPACING_MM)
    prob = lv_probability(_network("centring", weights_dir), crop_image(norm_frame, tf))
    c = lv_centre_from_probability(prob)
    if c is None:
        hint = lost_spacing_hint(spacing)  # the networks work in mm: a lost voxel size shows them the wrong scale
        raise InputError(source, "no left ventricle found in the image (is this a short-axis cardiac cine?)"
                                 + (f"; {hint}" if hint else ""))
    r0, c0 = tf.crop_to_input(np.array(c[0]), np.array(c[1]))
    # refine with the segmentation network on a crop centred there
    t0 = crop_transform(norm_frame.shape, spacing, (float(r0), float(c0)))
    probs = _segment(_network("segmentation", weights_dir), crop_image(norm_frame, t0)[None], precision=precision)[0]
    lv = probs[2] + probs[3]
    c1 = lv_centre_from_probability(lv)
    if c1 is None:
        return float(r0), float(c0)
    r1, cc1 = t0.crop_to_input(np.array(c1[0]), np.array(c1[1]))
    return float(r1), float(cc1)


def _slices_reversed(cine: Cine) -> Cine:
    """``cine`` with its slice axis stored the other way round: the same voxels in the world."""
    import dataclasses

    data, geometry = flip_axis(cine.data, cine.geometry, 0)
    return dataclasses.replace(cine, data=data, geometry=geometry,
                               labels={k: flip_axis(v, cine.geometry, 0)[0] for k, v in cine.labels.items()})


def _turned_back(p: Prediction, geometry: Geometry) -> Prediction:
    """A :class:`Prediction` made on :func:`_slices_reversed` of a cine of ``geometry``, in that cine's
    slice order (displacements are RAS vectors: only their arrays turn; the crop's through-plane
    component of the network's field changes sign)."""
    nm = p.network_motion
    if nm is not None:
        u = np.ascontiguousarray(nm.displacement_vox[:, :, ::-1])
        u[:, 0] *= -1
        nm = NetworkMotion(u, np.ascontiguousarray(nm.probabilities[:, :, ::-1]),
                           np.ascontiguousarray(nm.labels[:, ::-1]), nm.crop, geometry, nm.ed)
    disp = None if p.displacement is None else np.ascontiguousarray(p.displacement[:, :, ::-1])
    return Prediction(labels=np.ascontiguousarray(p.labels[:, ::-1]), displacement=disp, lv_centre=p.lv_centre,
                      lv_centre_voxel=p.lv_centre_voxel, crop=p.crop, ed=p.ed,
                      motion_slice_order=None if p.displacement is None else "reversed", network_motion=nm,
                      flipped_frames=p.flipped_frames)


def predict(cine: Cine, *, progress: Progress | None = None, with_motion: bool = True,
            weights_dir: Path | None = None, tta: str | tuple[int, ...] = "ed-es", precision: str = "auto",
            refine_motion: bool = False, refine_with: np.ndarray | None = None,
            keep_network_motion: bool = False, centre: tuple[float, float] | None = None,
            _base_first: bool = False) -> Prediction:
    """Segmentation (and motion) of every frame of ``cine`` on its own grid (see the module docstring).

    ``tta``: the frames segmented with the 4 flips of :data:`FLIPS`: one of :data:`TTA_MODES`, or
    the frame indices to flip (to repeat an earlier run exactly, :attr:`Prediction.flipped_frames`);
    see benchmarks/README.md for the measured effect on accuracy. ``precision``: ``"auto"``, ``"float32"`` or
    ``"bfloat16"`` (:mod:`deepstrain.networks.precision`). ``refine_motion``: correct the motion
    network's field with the segmentation of every frame (:mod:`deepstrain.refinement`);
    ``refine_with``: labels ``(T, Z, Y, X)`` to refine it with instead of the network's (a given
    segmentation; :func:`deepstrain.refinement.motion_for_labels`). ``keep_network_motion``: also return the network's field and probabilities on the crop
    (:attr:`Prediction.network_motion`), to refine again after hand edits. ``centre``: input voxel
    (row, column) of the crop centre, instead of the centring network's (to run the networks again
    on the crop of an earlier run: :func:`deepstrain.analyze.network_motion_again`).
    """
    def report(f: float, msg: str) -> None:
        if progress:
            progress(f, msg)

    g = cine.geometry
    given_centre = centre
    if isinstance(tta, bool) or (isinstance(tta, str) and tta not in TTA_MODES):
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)} or frame indices, got {tta!r}")
    if not isinstance(tta, str):
        tta = tuple(int(f) for f in tta)
        if not all(0 <= f < cine.n_frames for f in tta):
            raise ValueError(f"test-time flip frames {list(tta)} are outside the study's {cine.n_frames} frames")
    with torch.no_grad():
        report(0.0, "normalising intensities")
        norm = normalize_intensity(cine.data)
        ed_hint = cine.ed if cine.ed is not None else 0
        if centre is None:
            report(0.05, "finding the left ventricle")
            centre = find_lv_centre(norm[ed_hint], g.spacing, weights_dir=weights_dir,
                                    source=cine.source or cine.name, precision=precision)
        centre = (float(centre[0]), float(centre[1]))
        t = crop_transform(cine.shape3d, g.spacing, centre, CROP_SIZE, TARGET_SPACING_MM)
        report(0.15, "segmenting")
        crops = crop_image(norm, t)
        del norm  # the networks read the crops only (a full-grid copy of the cine less from here on)
        net = _network("segmentation", weights_dir)
        probs = _segment(net, crops, flips=FLIPS if tta == "all" else ((),), precision=precision)
        labels = largest_components(uncrop_probabilities(probs, t))
        # ED and ES of the labels the analysis will use: given, else the networks' (found again after the flips)
        given_labels = None if refine_with is None else np.asarray(refine_with)
        if tta == "all":
            flipped = tuple(range(cine.n_frames))
        elif tta == "off":
            flipped = ()
        else:
            frames = tta if not isinstance(tta, str) else (
                None if given_labels is None else tuple(sorted(set(_lv_extremes(given_labels, cine.ed, cine.es)))))
            if frames != ():
                report(0.15, "segmenting ED and ES again with test-time flips" if tta == "ed-es"
                       else "segmenting the frames flipped before with test-time flips")
            flipped = key_frames_flipped(net, crops, probs, labels, t, cine.ed, cine.es, precision=precision,
                                         frames=frames)
        ed = _lv_extremes(labels if given_labels is None else given_labels, cine.ed, cine.es)[0]
        # base and apex from the labels the strain will use (given, else the networks'): decided once, here
        apex_first = slices_run_apex_first((labels if given_labels is None else given_labels)[ed], g)
        if apex_first and not _base_first:
            report(0.15, "the stack is stored apex first: analysing it base first, as the networks learnt")
            given = None if refine_with is None else np.ascontiguousarray(np.asarray(refine_with)[:, ::-1])
            inner = None if progress is None else (lambda f, m: progress(0.15 + 0.85 * f, m))  # never backwards
            again = predict(_slices_reversed(cine), progress=inner, with_motion=with_motion,
                            weights_dir=weights_dir, tta=tta, precision=precision, refine_motion=refine_motion,
                            refine_with=given, keep_network_motion=keep_network_motion, centre=given_centre,
                            _base_first=True)
            return _turned_back(again, g)
        disp = network_motion = order = None
        if with_motion:
            from .networks.motion import load_model

            report(0.45, "estimating motion")
            spacing_crop = np.array([g.spacing[0], t.target_spacing, t.target_spacing])
            # apex first only on a second pass whose labels disagree with the first's: the motion is still given base first
            order = "reversed" if apex_first else "as stored"
            u_mm = _motion_base_first(crops[ed], crops, spacing_crop, apex_first, model=load_model(weights_dir=weights_dir),
                                      precision=precision)  # zero at ED (the frame equals the reference)
            u_vox = u_mm / spacing_crop.reshape(1, 3, 1, 1, 1).astype(np.float32)
            state = NetworkMotion(u_vox, probs, labels, t, g, ed)
            if refine_motion:
                report(0.8, "refining the motion with the segmentation")
            disp = motion_for_labels(state, labels if refine_with is None else refine_with, refine=refine_motion)
            network_motion = state if keep_network_motion else None
        report(0.9, "networks done")
    k_mid = (cine.shape3d[0] - 1) / 2.0
    centre_ras = g.origin + g.direction @ (g.spacing * np.array([k_mid, centre[0], centre[1]]))
    return Prediction(labels=labels, displacement=disp, lv_centre=centre_ras, lv_centre_voxel=centre,
                      crop=t, ed=ed, motion_slice_order=order, network_motion=network_motion,
                      flipped_frames=flipped)
