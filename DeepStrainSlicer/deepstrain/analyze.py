"""Analyse one study from a path into an output folder (what ``deepstrain analyze`` does).

Segmentation and motion come from the networks unless the user gives them (corrected
contours, or another tracker's motion). The output folder is written atomically: it holds

* ``report.json``, ``strain.csv``, ``results.csv`` and ``slices.csv`` (see :mod:`deepstrain.report`),
* ``segmentation.nii.gz``: 4D (x, y, z, t) uint8, ACDC label values, on the input's grid,
* ``displacement.nii.gz``: 5D (x, y, z, t, 3) float32, RAS mm, Lagrangian from ED,
* for an input given as one file per frame (ACDC folders): ``<frame file name>_seg.nii.gz``
  for each input frame, on that file's grid and header.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from . import __version__, io, pipeline
from .cine import Cine
from .errors import InputError
from .outputs import atomic_output_dir, check_output_dir

if TYPE_CHECKING:
    from .refinement import NetworkMotion

Progress = Callable[[float, str], None]


def analyze_cine(
    cine: Cine,
    *,
    labels: np.ndarray | None = None,
    displacement: np.ndarray | None = None,
    ed: int | None = None,
    es: int | None = None,
    progress: Progress | None = None,
    tta: str = "ed-es",
    precision: str = "auto",
    weights_dir: str | os.PathLike | None = None,
    refine_motion: bool = True,
    keep_network_motion: bool = False,
    rv_insertion_ras: np.ndarray | None = None,
    labels_source: str | None = None,
    displacement_source: str | None = None,
    spacing_source: str = "input",
) -> pipeline.Analysis:
    """Run what is missing of (labels, displacement) through the networks, then strain and volumes.

    ``labels_source`` / ``displacement_source``: the files given labels / motion came from, for
    the errors they cause (:func:`deepstrain.pipeline.compute`). A single-slice cine is refused
    before the networks run (:func:`deepstrain.pipeline.check_stack`). The provenance records the
    voxel spacing used (``voxel_spacing_mm``: slice, row, column) and ``spacing_source`` (where
    it came from: "input", an option or a field).

    ``tta``: the frames segmented with test-time flips (:data:`deepstrain.networks.TTA_MODES`:
    ED and ES, the default; every frame; none); ``precision``: network arithmetic;
    ``weights_dir``: a weights folder with its manifest instead of the shipped weights;
    ``refine_motion``: correct the motion with the segmentation of every frame (the default)
    (:func:`deepstrain.inference.predict`); with given ``labels`` the motion is refined with them
    (:func:`deepstrain.refinement.motion_for_labels`), so it agrees with the segmentation that the
    strain uses. ``keep_network_motion``: keep the network's raw motion in
    ``analysis.network_motion``, to refine again after hand edits (the Slicer module does).
    ``rv_insertion_ras``: the anterior RV insertion point (RAS mm) orienting the AHA segments
    (:func:`deepstrain.pipeline.compute`).
    The report's ``provenance`` says what came from the networks, which weights (sha256) and
    arithmetic, and the package version.
    """
    pipeline.check_stack(cine)
    prov: dict = {"deepstrain_version": __version__,
                  "segmentation": "networks" if labels is None else "given",
                  "motion": "networks" if displacement is None else "given"}
    network_motion = None
    if labels is None or displacement is None:
        from . import inference  # torch is imported only when the networks are needed
        from .networks.precision import resolve
        from .weights import NETWORKS, provenance

        wdir = Path(weights_dir) if weights_dir is not None else None
        given_labels = labels is not None
        pred = inference.predict(
            cine,
            progress=progress,
            with_motion=displacement is None,
            weights_dir=wdir,
            tta=tta,
            precision=precision,
            refine_motion=refine_motion,
            refine_with=labels,  # a given segmentation, else the network's own (None)
            keep_network_motion=keep_network_motion,
        )
        if labels is None:
            labels = pred.labels
        if displacement is None:
            displacement = pred.displacement
        network_motion = pred.network_motion
        used = NETWORKS if prov["motion"] == "networks" else NETWORKS[:2]
        refined = bool(refine_motion and prov["motion"] == "networks")
        prov.update(weights=provenance(used, wdir), precision=resolve(precision), test_time_flips=tta,
                    test_time_flipped_frames=list(pred.flipped_frames),
                    motion_refined_with_segmentation=refined,
                    crop_centre_voxel=[pred.lv_centre_voxel[0], pred.lv_centre_voxel[1]])
        if prov["motion"] == "networks":
            prov["motion_reference_frame"] = pred.ed
            prov["motion_slice_order"] = pred.motion_slice_order
        del pred
        if refined:
            prov["motion_refined_with"] = "given segmentation" if given_labels else "network segmentation"
    if progress:
        progress(0.95, "strain and volumes")
    analysis = pipeline.compute(cine, labels, displacement, ed=ed, es=es, rv_insertion_ras=rv_insertion_ras,
                                labels_source=labels_source, displacement_source=displacement_source)
    prov.update(voxel_spacing_mm=[float(v) for v in cine.geometry.spacing], voxel_spacing_source=spacing_source)
    analysis.report["provenance"] = prov
    analysis.network_motion = network_motion
    return analysis


def _flipped_frames(provenance: dict) -> str | tuple[int, ...]:
    """The frames an earlier run segmented with test-time flips, from its report's ``provenance``
    (earlier reports recorded only whether every frame was flipped: a bool)."""
    mode = provenance.get("test_time_flips", False)
    if mode in ("all", "off"):  # the same path as the first run (a frame list would sum the flips in another order)
        return mode
    frames = provenance.get("test_time_flipped_frames")
    if frames is not None:
        return tuple(int(f) for f in frames)
    if isinstance(mode, bool):
        return "all" if mode else "off"
    raise ValueError(f"the report records test-time flips {mode!r} but not which frames were flipped")


def network_motion_again(cine: Cine, provenance: dict, *, weights_dir: str | os.PathLike | None = None,
                         progress: Progress | None = None) -> NetworkMotion:
    """The networks' raw motion of a study analysed before, by running them again as its report's
    ``provenance`` records: the same crop centre, motion reference frame, test-time flips and
    arithmetic, with weights whose sha256 must match the recorded ones.

    For refining the motion again after hand edits when the raw motion was not kept (a Slicer scene
    saved and loaded again); check the result with :func:`deepstrain.refinement.reproduces`.
    Raises ``ValueError`` saying what is missing or different.
    """
    from . import inference
    from .networks.precision import PRECISIONS
    from .weights import NETWORKS
    from .weights import provenance as weights_provenance

    if provenance.get("motion") != "networks":
        raise ValueError("the motion was not made by the networks")
    missing = [k for k in ("crop_centre_voxel", "motion_reference_frame", "weights", "precision")
               if provenance.get(k) is None]
    if missing:
        raise ValueError(f"the report does not record {', '.join(missing)} (made by an earlier version)")
    if provenance["precision"] not in PRECISIONS:
        raise ValueError(f"unknown arithmetic {provenance['precision']!r} in the report")
    wdir = Path(weights_dir) if weights_dir else None
    now = weights_provenance(NETWORKS, wdir)
    changed = [n for n in NETWORKS if (provenance["weights"].get(n) or {}).get("sha256") != now[n]["sha256"]]
    if changed:
        raise ValueError(f"the {', '.join(changed)} weights in {now['weights_dir']} are not the ones that made "
                         "the motion (their sha256 differs from the report's)")
    ref = int(provenance["motion_reference_frame"])
    if not 0 <= ref < cine.n_frames:
        raise ValueError(f"motion reference frame {ref} is outside the study's {cine.n_frames} frames")
    centre = provenance["crop_centre_voxel"]
    again = dataclasses.replace(cine, ed=ref)
    pred = inference.predict(again, progress=progress, with_motion=True, weights_dir=wdir,
                             tta=_flipped_frames(provenance), precision=provenance["precision"],
                             centre=(float(centre[0]), float(centre[1])), keep_network_motion=True)
    return pred.network_motion


def write_analysis(analysis: pipeline.Analysis, out_dir: str | os.PathLike, *, overwrite: bool = False,
                   qc: bool = False, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write report, tables and NIfTI outputs of ``analysis`` atomically into ``out_dir``
    (``qc``: also the picture ``qc.png`` of :mod:`deepstrain.qc`; ``inputs``: the paths read,
    which ``out_dir`` may not be or contain, :func:`deepstrain.outputs.check_output_dir`)."""
    cine = analysis.cine
    with atomic_output_dir(out_dir, overwrite=overwrite, inputs=inputs, kind="analysis") as tmp:
        analysis.write(tmp)
        if qc:
            from .qc import qc_figure

            qc_figure(analysis, tmp / "qc.png")
        io.save_labels(analysis.labels, cine.geometry, tmp / "segmentation.nii.gz", times_ms=cine.times_ms)
        if analysis.displacement is not None:
            io.save_displacement(analysis.displacement, cine.geometry, tmp / "displacement.nii.gz",
                                 times_ms=cine.times_ms)
        for t, frame_file in enumerate(cine.frame_files or []):
            stem = Path(frame_file).name
            for ext in (".nii.gz", ".nii"):
                if stem.endswith(ext):
                    stem = stem[: -len(ext)]
                    break
            io.save_frame_labels(analysis.labels[t], frame_file, tmp / f"{stem}_seg.nii.gz")
    return Path(out_dir)


def analyze_path(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    segmentation: str | os.PathLike | None = None,
    displacement: str | os.PathLike | None = None,
    spacing: tuple[float, float, float] | None = None,
    heart_rate_bpm: float | None = None,
    rr_ms: float | None = None,
    ed: int | None = None,
    es: int | None = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    given_source: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    tta: str = "ed-es",
    precision: str = "auto",
    weights_dir: str | os.PathLike | None = None,
    refine_motion: bool = True,
    qc: bool = False,
    rv_insertion_ras: tuple[float, float, float] | None = None,
) -> dict:
    """Load ``input_path``, analyse it and write ``out_dir``; returns the report dict.

    ``ed``/``es`` are 0-based frame indices; ``spacing`` is (slice, row, column) in mm; ``qc``:
    also write ``qc.png`` (:mod:`deepstrain.qc`); ``rv_insertion_ras``: the anterior RV insertion
    point (RAS mm) orienting the AHA segments instead of the RV contours; ``height_cm`` /
    ``weight_kg``: the subject's body size (indexed volumes), replacing the input's;
    ``given_source``: where the given spacing, heart rate, height and weight came from, for the
    report (default: the command-line flags). The report's ``provenance`` records the voxel
    spacing used (``voxel_spacing_mm``, slice, row, column) and its source.
    """
    inputs = (input_path, segmentation, displacement)
    check_output_dir(out_dir, overwrite, inputs, kind="analysis")  # refuse at once, not after the analysis
    if progress:
        progress(0.0, "loading")
    cine = io.load_cine(input_path, spacing=spacing, heart_rate_bpm=heart_rate_bpm, rr_ms=rr_ms, ed=ed, es=es,
                        height_cm=height_cm, weight_kg=weight_kg, given_source=given_source)
    labels = io.load_labels(segmentation, cine) if segmentation is not None else None
    disp = io.load_displacement(displacement, cine) if displacement is not None else None
    point = None
    if rv_insertion_ras is not None:
        point = np.asarray(rv_insertion_ras, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise InputError(input_path, f"the RV insertion point must be three finite numbers (R A S, mm), got "
                                         f"{rv_insertion_ras}")
    unused = [flag for flag, given in (("--tta", tta != "ed-es"), ("--precision", precision != "auto"),
                                       ("--weights", weights_dir is not None)) if given]
    if labels is not None and disp is not None and unused:
        message = (f"{' and '.join(unused)} ignored: the segmentation and the displacement were both given, "
                   "so no network runs")
        cine.warnings.append(message)
        warnings.warn(message, io.DeepStrainWarning, stacklevel=2)
    analysis = analyze_cine(cine, labels=labels, displacement=disp, ed=cine.ed, es=cine.es, progress=progress,
                            tta=tta, precision=precision, weights_dir=weights_dir, refine_motion=refine_motion,
                            rv_insertion_ras=point, labels_source=None if segmentation is None else str(segmentation),
                            displacement_source=None if displacement is None else str(displacement),
                            spacing_source="input" if spacing is None else (given_source or "--spacing"))
    if progress and qc:
        progress(0.97, "quality-control picture")
    write_analysis(analysis, out_dir, overwrite=overwrite, qc=qc, inputs=inputs)
    if progress:
        progress(1.0, "done")
    return analysis.report
