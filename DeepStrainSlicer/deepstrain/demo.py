"""The built-in demonstration: a phantom with exact motion, run through the whole pipeline.

``deepstrain demo --out DIR`` writes ``DIR/phantom/`` (the phantom's cine, labels, exact
displacement and ``reference.json``), ``DIR/analysis/`` (what ``deepstrain analyze`` writes
for the phantom's cine, networks included) and ``DIR/comparison.json``: for the headline
figures, the networks' result, the same engine on the phantom's exact labels and motion
(``exact_inputs``: what the voxel grid alone gives, e.g. volumes counted on 8 mm slices), the
continuous analytic reference, and the differences ``difference`` (result - reference) and
``network_error`` (result - exact_inputs: what the networks add).
"""
from __future__ import annotations

import json
import os

from . import phantom, pipeline
from .analyze import Progress, analyze_cine, write_analysis
from .outputs import atomic_output_dir

HEADLINE = [
    ("volumetrics", "lv_edv_ml"), ("volumetrics", "lv_esv_ml"), ("volumetrics", "lv_ef_percent"),
    ("volumetrics", "lv_mass_g"), ("ess", "radial"), ("ess", "circumferential"), ("ess", "longitudinal"),
    ("twist", "es_twist_deg"),
]


def compare_to_reference(result: dict, reference: dict, exact_inputs: dict) -> dict:
    """Headline figures of ``result`` (the networks), ``exact_inputs`` (the engine on the exact labels
    and motion) and ``reference`` (analytic) side by side, with ``difference`` (result - reference)
    and ``network_error`` (result - exact_inputs)."""
    def minus(a, b):
        return None if a is None or b is None else round(a - b, 4)

    rows = {}
    for group, key in HEADLINE:
        got = (result.get(group) or {}).get(key)
        exact = (exact_inputs.get(group) or {}).get(key)
        ref = (reference.get(group) or {}).get(key)
        rows[f"{group}.{key}"] = {"result": got, "exact_inputs": exact, "reference": ref,
                                  "difference": minus(got, ref), "network_error": minus(got, exact)}
    return rows


def run_demo(out: str | os.PathLike, *, seed: int = 2024, overwrite: bool = False,
             progress: Progress | None = None, refine_motion: bool = True) -> dict:
    """Generate the default phantom (``seed``), analyse it with the networks, write ``out``
    (``refine_motion``: as ``deepstrain analyze``, on by default)."""
    if progress:
        progress(0.0, "making the phantom")
    ph = phantom.generate_phantom(phantom.PhantomParams(seed=seed))
    analysis = analyze_cine(ph.cine, progress=progress, refine_motion=refine_motion)
    frames = ph.reference["frames"]
    exact = pipeline.compute(ph.cine, ph.labels, ph.displacement, ed=frames["ed"], es=frames["es"])
    with atomic_output_dir(out, overwrite=overwrite, kind="demo") as tmp:
        phantom.write_phantom(ph, tmp / "phantom")
        write_analysis(analysis, tmp / "analysis", qc=True)  # analysis/qc.png: the picture to look at first
        comparison = compare_to_reference(analysis.report, ph.reference, exact.report)
        (tmp / "comparison.json").write_text(json.dumps(comparison, indent=2))
    if progress:
        progress(1.0, "done")
    print(f"{'':32s} {'networks':>10s} {'exact in':>10s} {'analytic':>10s}   (exact in: the engine on the exact "
          "labels and motion)")
    for name, row in comparison.items():
        print(f"{name:32s} {_num(row['result'])} {_num(row['exact_inputs'])} {_num(row['reference'])}")
    return analysis.report


def _num(v) -> str:
    return f"{'—':>10s}" if v is None else f"{v:10.2f}"
