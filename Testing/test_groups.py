"""Group figures: numbers behind the figures recomputed independently, files written, re-creatable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import batch_fakes
from deepstrain import batch, cli, groups
from deepstrain.io import DeepStrainWarning

COHORT = {"patient001": "DCM", "patient002": "DCM", "patient003": "NOR", "patient004": "NOR",
          "patient005": "NOR", "patient006": "HCM"}  # fmt: skip


def test_cycle_normalise() -> None:
    t = 20
    y = np.sin(2 * np.pi * np.arange(t) / t)
    u = np.linspace(0, 1, 41)
    got = groups.cycle_normalise(y, ed=0, n_points=41)
    # the grid points at multiples of 1/20 are frames: exact; the others linear between frames
    assert got[::2] == pytest.approx(np.append(y, y[0]))
    assert got[1] == pytest.approx((y[0] + y[1]) / 2)
    # the same cycle stored from another starting frame (ED = 5) gives the same normalised curve
    assert groups.cycle_normalise(np.roll(y, 5), ed=5, n_points=41) == pytest.approx(got)
    assert u.size == got.size


def _batch_dir(tmp_path: Path, two_frame: set[str] = frozenset()) -> tuple[Path, dict]:
    root = batch_fakes.make_cohort(tmp_path / "in", COHORT, with_others=False)
    out = tmp_path / "out"
    out.mkdir()
    rows, reports = [], {}
    for s in batch.discover_studies(root):
        rep = batch_fakes.fake_report(str(s.path), n_frames=2 if s.id in two_frame else batch_fakes.N_FRAMES)
        (out / s.id).mkdir()
        (out / s.id / "report.json").write_text(json.dumps(rep))
        rows.append(batch.summary_row(s, rep, status="ok", seconds=1.0))
        reports[s.id] = rep
    failed = batch.Study("patient999", root / "patient999", "acdc", "NOR")
    rows.append(batch.summary_row(failed, None, status="failed", error="x"))
    batch.write_summary(rows, out / "summary.csv")
    return out, reports


def test_group_numbers_and_files(tmp_path: Path) -> None:
    out, reports = _batch_dir(tmp_path, two_frame={"patient002"})
    made = groups.make_group_figures(out)
    names = sorted(p.name for p in made)
    assert names == sorted(["strain_curves.png", "strain_rate_curves.png", "polar_radial.png",
                            "polar_circumferential.png", "ess_by_group.png", "groups.json"])
    from matplotlib.image import imread

    for p in made:
        assert p.is_file() and p.parent == out / "figures"
        if p.suffix == ".png":
            assert imread(str(p)).shape[0] > 100
    st = json.loads((out / "figures" / "groups.json").read_text())
    assert list(st["groups"]) == ["DCM", "HCM", "NOR"]  # the failed study is not used
    nor = st["groups"]["NOR"]
    assert nor["ids"] == ["patient003", "patient004", "patient005"]
    ess = [reports[i]["ess"]["radial"] for i in nor["ids"]]
    assert nor["ess"]["radial"]["mean"] == pytest.approx(np.mean(ess))
    assert nor["ess"]["radial"]["sd"] == pytest.approx(np.std(ess, ddof=1))
    # healthy strongest, DCM weakest in the fake cohort
    means = {g: e["ess"]["radial"]["mean"] for g, e in st["groups"].items()}
    assert means["NOR"] > means["HCM"] > means["DCM"]
    # curves: the two-frame study is left out of the curves, kept for ESS and the polar map
    dcm = st["groups"]["DCM"]
    assert dcm["curves"]["radial_percent"]["n"] == 1 and len(dcm["ess"]["radial"]["values"]) == 2
    assert st["notes"]["studies_without_curves"]["DCM"] == 1
    one = groups.cycle_normalise(reports["patient001"]["global_strain"]["radial_percent"], 0, 50)
    assert dcm["curves"]["radial_percent"]["mean"] == pytest.approx(one.tolist())
    assert dcm["curves"]["radial_percent"]["sd"] == pytest.approx([0.0] * 50)
    stack = [groups.cycle_normalise(reports[i]["global_strain_rate"]["circumferential_per_s"], 0, 50)
             for i in nor["ids"]]
    assert nor["rate_curves"]["circumferential_per_s"]["mean"] == pytest.approx(np.mean(stack, 0).tolist())
    # polar: segment means over the studies that have the segment
    for s in ("1", "9", "17"):
        vals = [reports[i]["aha"]["circumferential_percent"][s] for i in dcm["ids"]]
        vals = [v for v in vals if v is not None]
        assert dcm["polar"]["circumferential"]["n"][s] == len(vals)
        assert dcm["polar"]["circumferential"]["mean"][s] == (pytest.approx(np.mean(vals)) if vals else None)


def test_recreate_with_cli_is_deterministic(tmp_path: Path) -> None:
    out, _ = _batch_dir(tmp_path)
    groups.make_group_figures(out)
    first = (out / "figures" / "groups.json").read_text()
    assert cli.main(["groups", str(out)]) == 0
    assert (out / "figures" / "groups.json").read_text() == first
    gcsv = tmp_path / "g.csv"
    gcsv.write_text("id,group\npatient001,NOR\n")
    assert cli.main(["groups", str(out), "--groups", str(gcsv), "--out", str(tmp_path / "f2")]) == 0
    st = json.loads((tmp_path / "f2" / "groups.json").read_text())
    assert "patient001" in st["groups"]["NOR"]["ids"]
    gcsv.write_text("id,group\npatient001,NOR\npatient0O2,HCM\n")  # a typing error in one id: named
    with pytest.warns(DeepStrainWarning, match=r"g\.csv: 1 id\(s\) are not studies of .*: patient0O2"):
        groups.make_group_figures(out, out_dir=tmp_path / "f3", groups_csv=gcsv)
    gcsv.write_text("id,group\nnobody,HCM\n")  # no id at all: an error, not figures of the old groups
    assert cli.main(["groups", str(out), "--groups", str(gcsv), "--out", str(tmp_path / "f4")]) == 2
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert cli.main(["groups", str(out), "--out", str(user)]) == 2
    assert (user / "notes.txt").read_text() == "keep"


def test_batch_writes_figures_at_the_end(tmp_path: Path) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", COHORT, with_others=False)
    res = batch.run_batch(root, tmp_path / "out", study_fn=batch_fakes.fake_study, progress=None)
    assert res.exit_code == 0
    assert (tmp_path / "out" / "figures" / "polar_radial.png").is_file()
    assert any(f.endswith("groups.json") for f in res.figures)


def test_studies_with_quality_findings_can_be_left_out(tmp_path: Path, capsys) -> None:
    out, reports = _batch_dir(tmp_path)
    rep = json.loads((out / "patient003" / "report.json").read_text())
    rep["quality"] = [{"check": "open_myocardium", "message": "m", "frame": 0, "slices": [3], "points_ras": []}]
    (out / "patient003" / "report.json").write_text(json.dumps(rep))
    groups.make_group_figures(out)
    st = json.loads((out / "figures" / "groups.json").read_text())
    assert "patient003" in st["groups"]["NOR"]["ids"]  # kept unless asked
    assert st["notes"]["excluded_by_quality"] == {"checks": [], "studies": {}}
    assert cli.main(["groups", str(out), "--exclude-quality", "ef_outside_range"]) == 0
    assert "patient003" in json.loads((out / "figures" / "groups.json").read_text())["groups"]["NOR"]["ids"]
    capsys.readouterr()
    assert cli.main(["groups", str(out), "--exclude-quality", "open_myocardium"]) == 0
    st = json.loads((out / "figures" / "groups.json").read_text())
    assert st["groups"]["NOR"]["ids"] == ["patient004", "patient005"]
    assert st["notes"]["excluded_by_quality"]["studies"] == {"patient003": ["open_myocardium"]}
    assert "patient003: open_myocardium" in capsys.readouterr().out
    assert cli.main(["groups", str(out), "--exclude-quality", "any", "--out", str(tmp_path / "f")]) == 0
    with pytest.raises(SystemExit):
        cli.main(["groups", str(out), "--exclude-quality", "not_a_check"])
    with pytest.raises(ValueError, match="unknown quality checks"):
        groups.make_group_figures(out, exclude_checks=("not_a_check",))
