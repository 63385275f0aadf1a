"""How often the automatic quality checks (:mod:`deepstrain.quality`) fire, and whether they point at real errors.

1. **Manual labels**, all 100 ACDC training patients (ED and ES): every check on the expert
   contours. A check that fires here fires on good contours (a false alarm, or a real trait of
   the acquisition such as a misaligned slice).
2. **The networks' segmentation** of the 20 validation patients (``predict`` as
   ``deepstrain analyze`` runs it, without motion), then of the 80 training patients: the checks
   per patient, and the patients' errors against the manual labels (LV EF error, Dice of LV
   cavity and myocardium at ES), for flagged and unflagged patients; and how often the ring of
   the most apical cavity slice (not checked) is open.
3. **Outside ACDC**: the whole ``deepstrain analyze`` of the UK Biobank demo subject (folder as it
   is) and the Sunnybrook DICOM cine, where the ES volume is known to be under-estimated (see
   ``external_validation.py``).
4. **Full ACDC cycles** (``acdc_cine_crop``), with ED / ES given: ``ed_es_frames`` and
   ``apex_not_covered`` (the crops cut apical slices; how much of the manual ED cavity they cut is
   printed); then the three files whose header lost the spacing, analysed as they are (without
   the true spacing): ``heart_size``.
5. **Motion** (``motion_mismatch``, ``strain_sign``) on the 20 validation patients, analysed as
   ``deepstrain analyze`` does (motion refined), with the motion network's field alone
   (``--no-refine-motion``), and with the refined motion given in a wrong convention (LPS
   components as RAS; in pixels instead of mm: divided by the mean in-plane pixel size).

Sections 1, 2 and 4 run the checks through :func:`deepstrain.pipeline.compute` with labels only, i.e.
exactly as in ``report.json``. Usage: python benchmarks/quality_checks.py [--data ../shared/data] [--threads 2]
[--patients N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from segmentation_accuracy import dice as _dice  # noqa: E402


def _findings(cine, labels: np.ndarray, ed: int, es: int) -> tuple[list[dict], dict]:
    from deepstrain import pipeline

    analysis = pipeline.compute(cine, labels, None, ed=ed, es=es)
    return analysis.report["quality"], analysis.report["volumetrics"]


def _two_frame(cine, labels_ed: np.ndarray, labels_es: np.ndarray):
    """The ED and ES frames of an ACDC cine as a two-frame cine (ED 0, ES 1) and its labels."""
    from dataclasses import replace

    data = cine.data[[cine.ed, cine.es]]
    two = replace(cine, data=data, times_ms=np.full(2, np.nan), ed=0, es=1, frame_numbers=np.arange(2),
                  frame_files=None, labels={})
    return two, np.stack([labels_ed, labels_es]).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPSTRAIN_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patients", type=int, default=0, help="only the first N patients of each list (a quick look)")
    args = ap.parse_args(argv)

    import torch

    from deepstrain import io
    from deepstrain.errors import InputError
    from deepstrain.inference import predict
    from deepstrain.analyze import analyze_cine
    from deepstrain.refinement import motion_for_labels
    from deepstrain.quality import (CHECKS, OPEN_BORDER_FRACTION, check_motion, motion_overlap, open_border_fraction,
                                    slice_positions_mm)
    from deepstrain.strain import cardiac_frame
    from deepstrain.training.data import TRAINING_PATIENTS, VALIDATION_PATIENTS

    torch.set_num_threads(args.threads)
    acdc = args.data / "acdc" / "training"
    if not acdc.is_dir():
        raise SystemExit(f"{acdc}: ACDC training folder not found (use --data)")
    every = sorted(p.name for p in acdc.glob("patient*") if p.is_dir())
    val = list(VALIDATION_PATIENTS)
    if args.patients:
        every, val = every[: args.patients], val[: args.patients]

    def load(name: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return io.load_cine(acdc / name)

    # 1. manual labels
    manual, any_flag = Counter(), 0
    print(f"1. manual labels, {len(every)} ACDC patients (ED and ES):")
    for name in every:
        cine = load(name)
        two, lab = _two_frame(cine, cine.labels[cine.ed], cine.labels[cine.es])
        found, _ = _findings(two, lab, 0, 1)
        for c in sorted({f["check"] for f in found}):
            manual[c] += 1
        any_flag += bool(found)
        for f in found:
            print(f"   {name}: {f['check']}: {f['message']}")
    print("   patients flagged per check: " + ", ".join(f"{c} {manual[c]}" for c in CHECKS)
          + f"; by any check: {any_flag} of {len(every)}")

    # 2. the networks' segmentation, validation patients (the benchmark), then training patients
    def network_rows(names: list[str], title: str) -> None:
        print(f"\n2. networks' segmentation, {len(names)} {title}:")
        rows, t0, open_apex = [], time.time(), 0
        for name in names:
            cine = load(name)
            pred = predict(cine, with_motion=False)
            two, lab = _two_frame(cine, pred.labels[cine.ed], pred.labels[cine.es])
            found, vol = _findings(two, lab, 0, 1)
            _, gt = _two_frame(cine, cine.labels[cine.ed], cine.labels[cine.es])
            _, vol_gt = _findings(two, gt, 0, 1)
            err = vol["lv_ef_percent"] - vol_gt["lv_ef_percent"]
            row = {"patient": name, "checks": sorted({f["check"] for f in found}), "ef_error": err,
                   "dice_lv_es": _dice(lab[1] == 3, gt[1] == 3), "dice_myo_es": _dice(lab[1] == 2, gt[1] == 2)}
            rows.append(row)
            # the most apical cavity slice, which open_myocardium leaves out: is its ring open?
            frame = cardiac_frame(lab[0], two.geometry)
            pos = slice_positions_mm(lab.shape[1], two.geometry, frame)
            apex_open = False
            for f in (0, 1):
                ks = np.nonzero((lab[f] == 3).any(axis=(1, 2)))[0]
                if ks.size:
                    apex_open |= open_border_fraction(lab[f, ks[np.argmax(pos[ks])]]) > OPEN_BORDER_FRACTION
            open_apex += apex_open
            row["apex_open"] = apex_open
            print(f"   {name}: EF error {err:+5.1f} points, Dice ES LV {row['dice_lv_es']:.3f} myo "
                  f"{row['dice_myo_es']:.3f}; {', '.join(row['checks']) or 'no finding'}"
                  + ("; ring open on the most apical cavity slice (not checked)" if apex_open else ""))
            for f in found:
                print(f"      {f['message']}")
        flagged = [r for r in rows if r["checks"]]
        clean = [r for r in rows if not r["checks"]]

        def mean(rs, key, f=lambda x: x):
            return float(np.mean([f(r[key]) for r in rs])) if rs else float("nan")

        print(f"   {len(flagged)} of {len(rows)} patients flagged ({time.time() - t0:.1f} s for the {len(rows)} "
              "segmentations and checks)")
        print(f"   flagged:   mean |EF error| {mean(flagged, 'ef_error', abs):.2f} points, Dice ES LV "
              f"{mean(flagged, 'dice_lv_es'):.3f}, myo {mean(flagged, 'dice_myo_es'):.3f}")
        print(f"   unflagged: mean |EF error| {mean(clean, 'ef_error', abs):.2f} points, Dice ES LV "
              f"{mean(clean, 'dice_lv_es'):.3f}, myo {mean(clean, 'dice_myo_es'):.3f}")
        big = [r for r in rows if abs(r["ef_error"]) > 5.0]
        print(f"   patients with |EF error| > 5 points: {len(big)}, of which flagged: "
              f"{sum(1 for r in big if r['checks'])}")
        ap = [r for r in rows if r["apex_open"]]
        rest = [r for r in rows if not r["apex_open"]]
        print(f"   ring open on the most apical cavity slice: {open_apex} of {len(rows)} patients, mean |EF error| "
              f"{mean(ap, 'ef_error', abs):.2f} points against {mean(rest, 'ef_error', abs):.2f} for the others")

    network_rows(val, "validation patients (not trained on)")
    train = [p for p in TRAINING_PATIENTS][: args.patients or None]
    network_rows(train, "training patients (the networks were trained on their ED and ES labels)")

    # 4 (printed after 3). full cycles, ED / ES given as the ACDC Info.cfg says
    def full_cycles() -> None:
        import json

        folder = args.data / "acdc_cine_crop"
        if not (folder / "crops.json").is_file():
            print(f"   {folder}: not found, skipped")
            return
        crops = json.loads((folder / "crops.json").read_text())
        names = sorted(crops)[: args.patients or None]
        fired = Counter()
        for name in names:
            files = sorted((folder / name).glob("*.nii.gz"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cine = io.load_cine(files[0], spacing=tuple(crops[name]["true_spacing_mm"][::-1]))
            pred = predict(cine, with_motion=False)
            ed, es = int(crops[name]["ED"]) - 1, int(crops[name]["ES"]) - 1
            found, vol = _findings(cine, pred.labels, ed, es)
            lv = pred.labels.reshape(pred.labels.shape[0], -1)
            vols = (lv == 3).sum(axis=1)
            # what the crop really cut off at the apex: the manual ED cavity on the dropped slices
            full = load(name)
            cav = (full.labels[full.ed] == 3).reshape(full.shape3d[0], -1).sum(axis=1)
            kept_end = int(crops[name]["crop_offset_in_original_frame_xyz"][2]) + int(crops[name]["shape_4d"][2])
            cut = 100.0 * cav[kept_end:].sum() / cav.sum()
            print(f"   {name}: {cine.n_frames} frames, given ED {ed} / ES {es}, largest / smallest predicted LV "
                  f"cavity at frames {int(vols.argmax())} / {int(vols.argmin())}; the crop cut off {cut:.1f} % of "
                  f"the manual ED LV cavity at the apex; {', '.join(f['check'] for f in found) or 'no finding'}")
            for f in found:
                print(f"      {f['message']}")
            for c in {f["check"] for f in found}:
                fired[c] += 1
        print(f"   {len(names)} cycles; patients flagged per check: "
              + (", ".join(f"{c} {n}" for c, n in sorted(fired.items())) or "none"))
        # the files whose header lost the spacing, analysed as they are (no --spacing): heart_size should fire
        lost = [n for n in names if np.allclose(crops[n]["header_zooms"][:3], 1.0)]
        hits = 0
        for name in lost:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cine = io.load_cine(sorted((folder / name).glob("*.nii.gz"))[0])
            try:
                pred = predict(cine, with_motion=False)
            except InputError as exc:  # no LV at the wrong scale: the error must name the spacing
                names_spacing = "--spacing" in str(exc)
                hits += names_spacing
                print(f"   {name} without --spacing (header 1 x 1 x 1 mm): refused: {exc.problem}; "
                      f"{'names' if names_spacing else 'does NOT name'} the spacing")
                continue
            found, vol = _findings(cine, pred.labels, int(crops[name]["ED"]) - 1, int(crops[name]["ES"]) - 1)
            sizes = [f["message"] for f in found if f["check"] == "heart_size"]
            hits += bool(sizes)
            print(f"   {name} without --spacing (header 1 x 1 x 1 mm): EDV {vol['lv_edv_ml']:.1f} ml, mass "
                  f"{vol['lv_mass_g']:.1f} g; heart_size {'fires' if sizes else 'does not fire'}")
        print(f"   spacing lost in the header, analysed without --spacing: heart_size fires, or the analysis is "
              f"refused with an error that names the spacing, on {hits} of {len(lost)}")

    # 3. outside ACDC
    print("\n3. outside ACDC (the whole deepstrain analyze: networks' segmentation and motion):")
    for label, path in (("UK Biobank demo subject", args.data / "ukbb_demo" / "1"),
                        ("Sunnybrook SCD0000101", args.data / "sunnybrook" / "SCD0000101")):
        if not path.exists():
            print(f"   {label}: {path} not found, skipped")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cine = io.load_cine(path)
        a = analyze_cine(cine)
        found, vol = a.report["quality"], a.report["volumetrics"]
        print(f"   {label}: EF {vol['lv_ef_percent']:.1f} %, ESS {a.report['ess']}; {len(found)} finding(s)")
        for f in found:
            print(f"      {f['check']}: {f['message']}")
    print("\n4. full ACDC cycles (acdc_cine_crop: the heart's crop, base and apex slices cut off), networks' "
          "segmentation of every frame, ED / ES as given by ACDC:")
    full_cycles()
    print("\n5. motion_mismatch on the validation patients: the motion deepstrain analyze makes (refined), the "
          "motion network's field alone (--no-refine-motion), and the refined motion given in a wrong convention "
          "(LPS components read as RAS; in pixels instead of mm):")
    fired = Counter()
    for name in val:
        cine = load(name)
        a = analyze_cine(cine, keep_network_motion=True)
        fields = {"refined": a.displacement,
                  "network alone": motion_for_labels(a.network_motion, a.labels, refine=False)}
        fields["LPS mistake"] = a.displacement.copy()
        fields["LPS mistake"][:, :2] *= -1
        fields["voxels mistake"] = a.displacement / float(np.mean(cine.geometry.spacing[1:]))  # in pixels, not mm
        parts = []
        for kind, u in fields.items():
            d_motion, d_none = motion_overlap(a.labels, u, cine.geometry, a.ed, a.es)
            hit = bool(check_motion(a.labels, u, cine.geometry, a.ed, a.es))
            fired[kind] += hit
            parts.append(f"{kind} {d_motion:.3f}{' (fires)' if hit else ''}")
        signs = [q["message"].split(" end-systolic")[0].replace("global ", "") for q in a.report["quality"]
                 if q["check"] == "strain_sign"]
        fired["strain_sign"] += bool(signs)
        print(f"   {name}: myocardium Dice at ES pulled back to ED: without motion {d_none:.3f}; " + ", ".join(parts)
              + (f"; strain_sign: {', '.join(signs)}" if signs else ""))
    print("   motion_mismatch fires on " + ", ".join(f"{n} of {len(val)} ({k})" for k, n in
                                                 ((k, fired[k]) for k in ("refined", "network alone", "LPS mistake",
                                                                          "voxels mistake"))))
    print(f"   strain_sign fires on {fired['strain_sign']} of {len(val)} analyses")

    return 0


if __name__ == "__main__":
    sys.exit(main())
