"""The built-in demonstration: a phantom with exact motion, run through the whole pipeline.

``deepstrain demo --out DIR`` writes ``DIR/phantom/`` (the phantom's cine, labels, exact
displacement and ``reference.json``), ``DIR/analysis/`` (what ``deepstrain analyze`` writes
for the phantom's cine, networks included) and ``DIR/comparison.json`` (network result
minus exact reference for the headline figures).
"""
from __future__ import annotations

import json
import os

from . import phantom
from .analyze import Progress, analyze_cine, write_analysis
from .outputs import atomic_output_dir

HEADLINE = [
    ("volumetrics", "lv_edv_ml"), ("volumetrics", "lv_esv_ml"), ("volumetrics", "lv_ef_percent"),
    ("volumetrics", "lv_mass_g"), ("ess", "radial"), ("ess", "circumferential"), ("ess", "longitudinal"),
    ("twist", "es_twist_deg"),
]


def compare_to_reference(result: dict, reference: dict) -> dict:
    """Headline figures of ``result`` and ``reference`` side by side, with their difference."""
    rows = {}
    for group, key in HEADLINE:
        got = (result.get(group) or {}).get(key)
        ref = (reference.get(group) or {}).get(key)
        diff = None if got is None or ref is None else round(got - ref, 4)
        rows[f"{group}.{key}"] = {"result": got, "reference": ref, "difference": diff}
    return rows


def run_demo(out: str | os.PathLike, *, seed: int = 2024, overwrite: bool = False,
             progress: Progress | None = None, refine_motion: bool = True) -> dict:
    """Generate the default phantom (``seed``), analyse it with the networks, write ``out``
    (``refine_motion``: as ``deepstrain analyze``, on by default)."""
    if progress:
        progress(0.0, "making the phantom")
    ph = phantom.generate_phantom(phantom.PhantomParams(seed=seed))
    analysis = analyze_cine(ph.cine, progress=progress, refine_motion=refine_motion)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        phantom.write_phantom(ph, tmp / "phantom")
        write_analysis(analysis, tmp / "analysis", qc=True)  # analysis/qc.png: the picture to look at first
        comparison = compare_to_reference(analysis.report, ph.reference)
        (tmp / "comparison.json").write_text(json.dumps(comparison, indent=2))
    if progress:
        progress(1.0, "done")
    for name, row in comparison.items():
        print(f"{name:32s} result {row['result']!s:>10}  exact {row['reference']!s:>10}  diff {row['difference']!s:>8}")
    return analysis.report
