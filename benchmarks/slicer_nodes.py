"""Benchmark of the Slicer module logic on real MRML (slicer-core, no app).

Prints: time to build all nodes of a 30-frame study (sequences, segmentation, grid transforms,
glyphs, tables, charts, polar map), the time of recompute, and the time to switch frames with and
without an offscreen render of the slice view (EGL), the time of Export (pictures, the QC page,
report and table), and the time to save the scene as a bundle, load it again and Recompute.

With ``--networks`` the study is analysed by the networks (motion refinement on, as in the module)
instead of being given the phantom's exact labels and motion, and Recompute is also timed after a
hand edit of the ES frame (its myocardium grown one voxel into the cavity): the motion is refined
again with the edited contours (:func:`deepstrain.refinement.motion_for_labels`); the global radial
ESS before and after the edit is printed.

    python benchmarks/slicer_nodes.py [--frames 30] [--matrix 128] [--slices 10] [--networks] [--keep-export DIR]

The screenshots of the extension (``Resources/Screenshots``) are Export's pictures of this study
with ``--networks --keep-export DIR``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "DeepStrainSlicer"))
sys.path.insert(0, str(REPO / "Testing" / "slicer"))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--switches", type=int, default=30)
    ap.add_argument("--networks", action="store_true", help="run the networks; time Recompute after an ES edit")
    ap.add_argument("--keep-export", type=Path, default=None, metavar="DIR",
                    help="keep Export's folder (pictures, QC page, report) in this existing folder")
    a = ap.parse_args()


    from conftest import Harness
    from deepstrain.phantom import PhantomParams, generate_phantom
    from deepstrain.qc import middle_slice
    from DeepStrainSlicerLib import render

    t0 = time.perf_counter()
    ph = generate_phantom(PhantomParams(n_frames=a.frames, matrix_size=a.matrix, n_slices=a.slices, pv_samples=1))
    t_phantom = time.perf_counter() - t0
    h = Harness()
    t0 = time.perf_counter()
    given = (None, None) if a.networks else (ph.labels, ph.displacement)
    analysis = h.logic.run(ph.cine, h.params, *given)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    from deepstrain.pipeline import compute

    compute(ph.cine, analysis.labels, analysis.displacement)
    t_compute = time.perf_counter() - t0
    n_nodes = h.scene.GetNumberOfNodes()
    t0 = time.perf_counter()
    h.logic.recompute(h.params)
    t_recompute = time.perf_counter() - t0
    edit = None
    if a.networks:
        from scipy import ndimage
        from DeepStrainSlicerLib import mrml

        es = analysis.es
        browser = h.params.ref("Browser")
        browser.SetSelectedItemNumber(es)
        lab = analysis.labels[es].copy()
        lab[ndimage.binary_dilation(lab == 2, structure=ndimage.generate_binary_structure(3, 1)) & (lab == 3)] = 2
        proxy = browser.GetProxyNode(h.params.ref("SegmentationSequence"))
        for name, value in (("lv_cavity", 3), ("lv_myocardium", 2)):
            mrml.set_segment_mask(proxy, name, lab == value, ph.cine.geometry)
        t0 = time.perf_counter()
        edited = h.logic.recompute(h.params)
        edit = (time.perf_counter() - t0, analysis.report["ess"]["radial"], edited.report["ess"]["radial"],
                edited.report["provenance"].get("motion_refined_with"))

    browser = h.params.ref("Browser")
    order = [(i * 7) % a.frames for i in range(a.switches)]
    t0 = time.perf_counter()
    for f in order:
        browser.SetSelectedItemNumber(f)
    t_switch = (time.perf_counter() - t0) / len(order)

    vol = browser.GetProxyNode(h.params.ref("CineSequence"))
    r = render.SliceViewRenderer(h.scene, h.app_logic, (512, 512))
    r.show(vol.GetID())
    r.align_to_volume(vol, middle_slice(ph.labels[analysis.ed]))
    r.render()
    t0 = time.perf_counter()
    for f in order:
        browser.SetSelectedItemNumber(f)
        r.render()
    t_switch_render = (time.perf_counter() - t0) / len(order)
    r.close()

    # Export: slice views, curves, polar map, the QC page, report and table (a new sub-folder)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exported = h.logic.export(h.params, a.keep_export or tmp)
        t_export = time.perf_counter() - t0

    shape = "x".join(str(s) for s in ph.cine.data.shape)
    print(f"study (T,Z,Y,X)            {shape}")
    print(f"phantom generation         {t_phantom:8.2f} s (not part of the module)")
    what = "networks + compute + build nodes" if a.networks else "compute + build nodes"
    print(f"run: {what} {t_build:8.2f} s  ({n_nodes} nodes in the scene)")
    print(f"  of which pipeline.compute{t_compute:8.2f} s")
    print(f"recompute, nothing edited (read back, compute, update) {t_recompute:.2f} s")
    if edit is not None:
        print(f"recompute after an ES edit (motion refined again with it) {edit[0]:.2f} s; "
              f"global radial ESS {edit[1]:.1f} -> {edit[2]:.1f} %; motion_refined_with: {edit[3]}")
    print(f"frame switch               {1000 * t_switch:8.1f} ms")
    print(f"frame switch + 512x512 render {1000 * t_switch_render:5.1f} ms")
    print(f"export ({len(exported)} files: pictures, QC page, report, table) {t_export:.2f} s")

    # the scene saved as a bundle and loaded again; the first Recompute (with --networks: the
    # networks run again to restore their raw motion, checked against the stored motion)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        h2 = h.save_and_reload(Path(tmp))
        t_reload = time.perf_counter() - t0
        size_mb = (Path(tmp) / "scene.mrb").stat().st_size / 1e6
        t0 = time.perf_counter()
        again = h2.logic.recompute(h2.params)
        t_again = time.perf_counter() - t0
        h2.close()
    last = edited if edit is not None else analysis
    same = again.report["ess"] == last.report["ess"]
    print(f"save scene (.mrb, {size_mb:.0f} MB) + load it again {t_reload:8.2f} s")
    print(f"first Recompute after loading {t_again:8.2f} s; networks_run_again: "
          f"{again.report['provenance'].get('networks_run_again', '-')}; ESS as before saving: {same}")
    h.close()


if __name__ == "__main__":
    main()
