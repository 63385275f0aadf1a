"""report.json / strain.csv / results.csv: exact keys, JSON-safe nulls, rounding, no overwriting."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from deepstrain.errors import InputError
from deepstrain.report import build_report, scalar_results, write_report

KEYS = {
    "study", "frames", "volumetrics", "subject", "global_strain", "global_strain_rate", "ess", "srs", "sre",
    "aha", "aha_curves", "rotation", "twist", "dyssynchrony", "conventions", "warnings",
}
VOL = {
    "lv_edv_ml": 120.123456, "lv_esv_ml": 50.0, "lv_sv_ml": 70.123456, "lv_ef_percent": 58.4,
    "lv_mass_g": 110.0, "rv_edv_ml": 0.0, "rv_esv_ml": 0.0, "rv_ef_percent": None,
}


def _full():
    t = np.array([0.0, 40.0, 80.0])
    curves = {"radial": np.array([0.0, 20.0, 40.0]), "circumferential": np.array([0.0, -9.0, -18.0]),
              "longitudinal": np.array([0.0, -5.0, np.nan])}
    rates = {k: np.gradient(v / 100, t / 1000) for k, v in curves.items()}
    peaks = {"ess": {k: v[2] for k, v in curves.items()}, "srs": {k: 1.0 for k in curves},
             "sre": {k: None for k in curves}}
    aha = {k: {s: (v + s if s != 17 else None) for s in range(1, 18)} for k, v in curves.items()}
    return build_report(study="s1", n_frames=3, ed=0, es=2, times_ms=t, volumetrics=VOL, curves=curves,
                        rates=rates, peaks=peaks, aha_curves=aha, warnings=["w1"],
                        subject={"height_cm": 180.0, "weight_kg": 80.0, "bsa_m2": 2.0, "heart_rate_bpm": None,
                                 "sources": {"height_cm": "Info.cfg Height (cm)", "weight_kg": "--weight"}})


def test_keys_and_json_safety():
    r = _full()
    assert set(r) == KEYS
    assert set(r["frames"]) == {"count", "ed", "es", "times_ms", "cycle_frames"}
    assert set(r["volumetrics"]) == set(VOL)
    assert set(r["global_strain"]) == {"radial_percent", "circumferential_percent", "longitudinal_percent"}
    assert set(r["global_strain_rate"]) == {"radial_per_s", "circumferential_per_s", "longitudinal_per_s"}
    for k in ("ess", "srs", "sre"):
        assert set(r[k]) == {"radial", "circumferential", "longitudinal"}
    assert set(r["aha"]["radial_percent"]) == {str(s) for s in range(1, 18)}
    assert set(r["rotation"]) == {"basal_deg", "mid_deg", "apical_deg"}
    assert set(r["twist"]) >= {"twist_deg", "es_twist_deg", "es_torsion_deg_per_cm"}
    assert set(r["subject"]) == {"height_cm", "weight_kg", "bsa_m2", "heart_rate_bpm", "bsa_formula", "sources"}
    assert r["subject"]["heart_rate_bpm"] is None and r["subject"]["sources"]["weight_kg"] == "--weight"
    assert "Mosteller" in r["subject"]["bsa_formula"]
    assert r["dyssynchrony"]["cure"] is None and r["dyssynchrony"]["ttp_radial_ms"]["16"] is None
    assert set(r["dyssynchrony"]["ttp_circumferential_ms"]) == {str(s) for s in range(1, 17)}
    text = json.dumps(r, allow_nan=False)  # no NaN anywhere
    back = json.loads(text)
    assert back["global_strain"]["longitudinal_percent"] == [0.0, -5.0, None]
    assert back["volumetrics"]["lv_edv_ml"] == 120.1235 and back["volumetrics"]["rv_ef_percent"] is None
    assert back["aha"]["radial_percent"]["3"] == 43.0 and back["aha"]["radial_percent"]["17"] is None
    assert back["aha_curves"]["circumferential_percent"]["1"] == [1.0, -8.0, -17.0]
    assert back["ess"]["longitudinal"] is None and back["sre"]["radial"] is None
    assert "radial positive" in r["conventions"] and "Green" in r["conventions"] and "ED" in r["conventions"]


def test_volumes_only_report_has_null_strain():
    r = build_report(study="s", n_frames=2, ed=0, es=1, times_ms=np.array([np.nan, np.nan]), volumetrics=VOL)
    assert set(r) == KEYS
    assert r["frames"]["times_ms"] == [None, None]
    assert r["global_strain"]["radial_percent"] is None and r["global_strain_rate"]["radial_per_s"] is None
    assert r["ess"]["radial"] is None and r["aha"]["longitudinal_percent"]["5"] is None
    assert r["subject"]["height_cm"] is None and r["subject"]["sources"] == {}
    json.dumps(r, allow_nan=False)


def test_write_report_files_and_no_overwrite(tmp_path):
    r = _full()
    vols = {"lv": np.array([120.0, 90.0, 50.0]), "myo": np.array([100.0, 100.0, 100.0]), "rv": np.array([80.0, 60.0, 40.0])}
    jp, cp, rp = write_report(r, tmp_path, volume_curves=vols)
    assert json.loads(jp.read_text()) == json.loads(json.dumps(r))
    rows = list(csv.DictReader(cp.open()))
    assert len(rows) == 3
    assert rows[0]["frame"] == "0" and rows[2]["time_ms"] == "80.0"
    assert float(rows[2]["global_radial_percent"]) == 40.0 and rows[2]["global_longitudinal_percent"] == ""
    assert float(rows[1]["lv_volume_ml"]) == 90.0 and float(rows[2]["rv_volume_ml"]) == 40.0
    assert float(rows[1]["aha_radial_1_percent"]) == 21.0 and rows[1]["aha_radial_17_percent"] == ""
    assert float(rows[1]["radial_rate_per_s"]) == pytest.approx(5.0)
    header = list(rows[0])
    assert header[:8] == ["frame", "time_ms", "global_radial_percent", "global_circumferential_percent",
                          "global_longitudinal_percent", "radial_rate_per_s", "circumferential_rate_per_s",
                          "longitudinal_rate_per_s"]
    assert header[-1] == "aha_longitudinal_17_percent" and len(header) == 8 + 3 + 5 + 51  # volumes, rotation + twist, AHA
    results = {row["quantity"]: row for row in csv.DictReader(rp.open())}
    assert results["lv_edv"]["value"] == "120.1235" and results["lv_edv"]["unit"] == "ml"
    assert results["bsa"]["value"] == "2.0" and results["bsa"]["unit"] == "m2"
    assert results["heart_rate"]["value"] == "" and results["rv_ef"]["value"] == ""
    assert results["ess_radial"]["value"] == "40.0" and results["srs_circumferential"]["unit"] == "1/s"
    assert "es_torsion" in results and results["es_torsion"]["unit"] == "deg/cm"
    before = jp.read_text()
    with pytest.raises(InputError, match="exists"):
        write_report(r, tmp_path)
    assert jp.read_text() == before
    with pytest.raises(InputError):
        write_report(r, tmp_path / "missing")


def test_scalar_results_units_and_order():
    r = _full()
    rows = scalar_results(r)
    names = [q for q, _, _ in rows]
    assert names[:4] == ["height", "weight", "bsa", "heart_rate"]  # subject first, then the volumes
    assert names.index("lv_edv") < names.index("ess_radial") < names.index("sre_longitudinal") < names.index("es_twist")
    assert names[-6:] == ["sd_ttp_radial", "sd_ttp_circumferential", "septal_lateral_delay_radial",
                          "septal_lateral_delay_circumferential", "post_systolic_segments", "cure"]
    units = {q: u for q, _, u in rows}
    assert units["height"] == "cm" and units["lv_ef"] == "%" and units["lv_mass"] == "g"
    assert units["sd_ttp_circumferential"] == "ms" and units["post_systolic_segments"] == "segments" and units["cure"] == "1"
    assert len(names) == len(set(names)) and all(u for u in units.values())
    r2 = dict(r, volumetrics={**VOL, "lv_mass_index_g_per_m2": 55.0, "lv_cardiac_index_l_per_min_per_m2": None})
    units = {q: u for q, _, u in scalar_results(r2)}
    assert units["lv_mass_index"] == "g/m2" and units["lv_cardiac_index"] == "l/min/m2"
