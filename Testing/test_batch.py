"""Cohort batch: discovery, bookkeeping, resume after a kill, local pool and Dask."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from deepstrain.io import DeepStrainWarning

import batch_fakes
from deepstrain import batch, cli
from deepstrain.errors import InputError
from deepstrain.weights import read_manifest

GROUPS = {"patient001": "DCM", "patient002": "DCM", "patient003": "NOR", "patient004": "NOR",
          "patient005": "HCM", "patient006": "HCM"}  # fmt: skip
ALL_IDS = ["more__cine4d", "more__dicomseries"] + sorted(GROUPS)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == batch.SUMMARY_COLUMNS
        rows = list(reader)
    for r in rows:  # no short or long rows
        assert None not in r and all(v is not None for v in r.values())
    return rows


def _log_names(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_discovery_rules_and_groups(tmp_path: Path) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", GROUPS)
    with pytest.warns(DeepStrainWarning, match=r"1 NIfTI file\(s\) that are not 4D cines of several frames left "
                                               r"out: more/single3d.nii.gz"):  # said, not skipped silently
        studies = batch.discover_studies(root)
    assert [s.id for s in studies] == ALL_IDS
    kinds = {s.id: s.kind for s in studies}
    assert kinds["patient001"] == "acdc" and kinds["more__cine4d"] == "nifti" and kinds["more__dicomseries"] == "dicom"
    assert {s.id: s.group for s in studies}["patient003"] == "NOR"
    # a groups CSV overrides Info.cfg and fills the others
    gcsv = tmp_path / "groups.csv"
    gcsv.write_text("id,group\npatient003,HCM\nmore__cine4d,NOR\n")
    got = {s.id: s.group for s in batch.discover_studies(root, table=batch.read_study_table(gcsv))}
    assert got["patient003"] == "HCM" and got["more__cine4d"] == "NOR" and got["more__dicomseries"] is None
    assert batch.read_groups_csv(gcsv) == {"patient003": "HCM", "more__cine4d": "NOR"}
    # same order every time
    assert [s.id for s in batch.discover_studies(root)] == ALL_IDS
    with pytest.raises(InputError, match="not found"):
        batch.discover_studies(tmp_path / "missing")


def test_discovery_of_uk_biobank_subject_folders(tmp_path: Path) -> None:
    """A UK Biobank subject folder is one study; its long-axis cines and labels are not studies."""
    import nibabel as nib
    import numpy as np

    aff = np.diag([1.8, 1.8, 8.0, 1.0])
    cine = nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.float32), aff)
    frame = nib.Nifti1Image(np.zeros((3, 3, 2), np.float32), aff)
    a, b = tmp_path / "in" / "ukbb" / "1000001", tmp_path / "in" / "ukbb" / "1000002"
    for d in (a, b):
        d.mkdir(parents=True)
        nib.save(cine, str(d / "la_4ch.nii.gz"))
    nib.save(frame, str(a / "sa_ED.nii.gz"))
    nib.save(frame, str(a / "sa_ES.nii.gz"))
    nib.save(cine, str(b / "sa.nii.gz"))
    studies = batch.discover_studies(tmp_path / "in")
    assert [(s.id, s.kind) for s in studies] == [("ukbb__1000001", "ukbb"), ("ukbb__1000002", "ukbb")]


def test_discovery_of_the_acdc_training_set(shared_data: Path) -> None:
    studies = batch.discover_studies(shared_data / "acdc" / "training")
    assert [s.id for s in studies] == [f"patient{i:03d}" for i in range(1, 101)]
    assert all(s.kind == "acdc" for s in studies)
    for i, grp in enumerate(("DCM", "HCM", "MINF", "NOR", "RV")):
        assert {s.group for s in studies[20 * i: 20 * i + 20]} == {grp}


def test_serial_batch_records_failures_and_resumes(tmp_path: Path) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", GROUPS)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    kw = {"log": str(log), "fail": ("patient002",)}
    stream = io.StringIO()
    res = batch.run_batch(root, out, study_fn=batch_fakes.fake_study, study_kwargs=kw, progress=stream, figures=False)
    assert res.exit_code == 1 and res.n_failed == 1 and res.n_ok == len(ALL_IDS) - 1
    rows = _rows(out / "summary.csv")
    assert [r["id"] for r in rows] == ALL_IDS
    by_id = {r["id"]: r for r in rows}
    assert by_id["patient002"]["status"] == "failed"
    assert "simulated unusable input" in by_id["patient002"]["error"] and "patient002" in by_id["patient002"]["error"]
    assert not (out / "patient002").exists()
    ok = by_id["patient003"]
    rep = batch_fakes.fake_report(str(root / "patient003"))
    assert ok["status"] == "ok" and ok["group"] == "NOR" and ok["error"] == ""
    assert float(ok["ess_radial_percent"]) == pytest.approx(rep["ess"]["radial"], abs=1e-4)
    assert float(ok["aha_circumferential_5_percent"]) == pytest.approx(rep["aha"]["circumferential_percent"]["5"], abs=1e-4)
    assert float(ok["srs_radial_per_s"]) == pytest.approx(rep["srs"]["radial"], abs=1e-4)
    assert float(ok["sre_longitudinal_per_s"]) == pytest.approx(rep["sre"]["longitudinal"], abs=1e-4)
    assert float(ok["seconds"]) >= 0
    assert ok["lv_ef_percent"] != "" and by_id["patient002"]["lv_ef_percent"] == ""
    assert (out / "patient003" / "report.json").is_file() and (out / "patient003" / "batch.json").is_file()
    assert not (out / ".tmp").exists()
    text = stream.getvalue()
    assert f"{len(ALL_IDS)}/{len(ALL_IDS)}" in text and "failed 1" in text and "left" in text
    # re-run: only the failed study is tried again
    mtime = (out / "patient003" / "report.json").stat().st_mtime_ns
    log.write_text("")
    res2 = batch.run_batch(root, out, study_fn=batch_fakes.fake_study, study_kwargs={"log": str(log)},
                           progress=None, figures=False)
    assert _log_names(log) == ["patient002"]
    assert res2.exit_code == 0 and res2.n_skipped == len(ALL_IDS) - 1 and res2.n_ok == 1
    assert (out / "patient003" / "report.json").stat().st_mtime_ns == mtime
    rows2 = _rows(out / "summary.csv")
    assert [r["status"] for r in rows2] == ["ok"] * len(ALL_IDS)
    assert {r["id"]: r["seconds"] for r in rows2}["patient003"] == ok["seconds"]  # kept from batch.json


def test_summary_row_names_the_quality_checks_that_fired() -> None:
    study = batch.Study(id="p1", path=Path("p1"), kind="nifti")
    rep = batch_fakes.fake_report("p1")
    rep["quality"] = [{"check": "open_myocardium", "message": "a"}, {"check": "open_myocardium", "message": "b"},
                      {"check": "ef_outside_range", "message": "c"}]
    assert batch.summary_row(study, rep, status="ok")["quality"] == "open_myocardium;ef_outside_range"
    rep["quality"] = []
    assert batch.summary_row(study, rep, status="ok")["quality"] == ""
    assert "quality" in batch.SUMMARY_COLUMNS


def test_summary_columns_name_their_units() -> None:
    """ESS in %, SRs and SRe in 1/s, AHA segments in %: the unit is part of the column name."""
    assert batch.PEAK_KEYS == tuple(f"ess_{c}_percent" for c in batch.COMPONENTS) + tuple(
        f"{p}_{c}_per_s" for p in ("srs", "sre") for c in batch.COMPONENTS)
    assert batch.AHA_KEYS[0] == "aha_radial_1_percent" and batch.AHA_KEYS[-1] == "aha_circumferential_17_percent"
    assert len(set(batch.SUMMARY_COLUMNS)) == len(batch.SUMMARY_COLUMNS)


def test_summary_row_gives_ed_and_es_as_frames_of_the_cycle() -> None:
    """An ACDC folder's two frames (Info.cfg ED 1, ES 12): the table says 0 and 11, as cycle_frames."""
    study = batch.Study(id="p1", path=Path("p1"), kind="acdc")
    rep = batch_fakes.fake_report("p1")
    rep["frames"] = {"count": 2, "ed": 0, "es": 1, "cycle_frames": [0, 11]}
    rep.setdefault("provenance", {})["voxel_spacing_mm"] = [10.0, 1.5625, 1.5625]
    row = batch.summary_row(study, rep, status="ok")
    assert (row["frames"], row["ed_frame"], row["es_frame"]) == ("2", "0", "11")
    assert (row["slice_spacing_mm"], row["column_spacing_mm"]) == ("10.0", "1.5625")


def test_pool_gives_the_same_table_as_serial(tmp_path: Path) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", GROUPS, with_others=False)
    a = batch.run_batch(root, tmp_path / "a", study_fn=batch_fakes.fake_study, progress=None, figures=False)
    b = batch.run_batch(root, tmp_path / "b", workers=2, threads=1, study_fn=batch_fakes.fake_study,
                        progress=None, figures=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds",)} for r in rows]  # noqa: E731
    assert b.exit_code == 0 and strip(a.rows) == strip(b.rows)
    assert strip(_rows(tmp_path / "b" / "summary.csv")) == strip(_rows(tmp_path / "a" / "summary.csv"))


def test_a_study_that_kills_its_worker_fails_alone(tmp_path: Path) -> None:
    """A dead worker breaks the whole pool; the unfinished studies run again one per process, so
    only the study that kills its process is failed, at once and again on a re-run."""
    root = batch_fakes.make_cohort(tmp_path / "in", {"crash01": "NOR", "p1": "NOR", "p2": "DCM", "p3": "HCM"},
                                   with_others=False)
    for _ in range(2):
        res = batch.run_batch(root, tmp_path / "out", workers=2, threads=1, study_fn=batch_fakes.crashing_study,
                              progress=None, figures=False)
        assert res.exit_code == 1 and res.n_failed == 1
        status = {r["id"]: r["status"] for r in _rows(tmp_path / "out" / "summary.csv")}
        assert status == {"crash01": "failed", "p1": "ok", "p2": "ok", "p3": "ok"}
    failed = [r for r in res.rows if r["status"] == "failed"][0]
    assert "died" in failed["error"] and "alone" in failed["error"]


def test_study_id_of_a_batch_folder_is_failed_not_mixed_in(tmp_path: Path) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", {"figures": "NOR", "p1": "NOR"}, with_others=False)
    res = batch.run_batch(root, tmp_path / "out", study_fn=batch_fakes.fake_study, progress=None)
    assert res.n_ok == 1 and res.n_failed == 1 and res.figures  # the figures of the others are made
    row = [r for r in res.rows if r["id"] == "figures"][0]
    assert row["status"] == "failed" and "rename the input" in row["error"]


def test_a_users_folder_with_a_summary_csv_is_not_taken_for_a_batch(tmp_path: Path) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", {"p1": "NOR"}, with_others=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.csv").write_text("subject,score\nalice,42\n")
    with pytest.raises(InputError, match="not a batch output folder"):
        batch.run_batch(root, mine, study_fn=batch_fakes.fake_study, progress=None)
    assert sorted(p.name for p in mine.iterdir()) == ["summary.csv"]
    assert (mine / "summary.csv").read_text() == "subject,score\nalice,42\n"


def test_dask_local_cluster(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    root = batch_fakes.make_cohort(tmp_path / "in", GROUPS, with_others=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, host="127.0.0.1",
                                  protocol="tcp://",
                                  dashboard_address=None) as cluster:
        res = batch.run_batch(root, tmp_path / "out", scheduler=cluster.scheduler_address,
                              study_fn=batch_fakes.fake_study, study_kwargs={"fail": ("patient004",)},
                              progress=None, figures=False)
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [r["id"] for r in rows] == sorted(GROUPS)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert res.exit_code == 1
    assert batch.load_report(tmp_path / "out" / "patient005")["ess"]["radial"] == pytest.approx(
        batch_fakes.fake_report(str(root / "patient005"))["ess"]["radial"])


def test_kill_half_way_then_resume(tmp_path: Path) -> None:
    names = {f"patient{i:03d}": "NOR" for i in range(1, 11)}
    root = batch_fakes.make_cohort(tmp_path / "in", names, with_others=False)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import batch_fakes
        from deepstrain import batch
        batch.run_batch({str(root)!r}, {str(out)!r}, workers=2, threads=1, study_fn=batch_fakes.fake_study,
                        study_kwargs={{"delay": 0.5, "log": {str(log)!r}}}, progress=None, figures=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len([p for p in out.glob("patient*") if p.is_dir()]) < 3:
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(1.5)  # the orphaned pool workers notice within 0.5 s and exit
    done_before = sorted(p.name for p in out.glob("patient*"))
    assert 3 <= len(done_before) < len(names)
    for p in out.glob("patient*"):  # no half-written study
        assert batch.load_report(p) is not None
    rows = _rows(out / "summary.csv")
    assert all(r["status"] == "ok" for r in rows) and {r["id"] for r in rows} <= set(done_before)
    mtimes = {n: (out / n / "report.json").stat().st_mtime_ns for n in done_before}
    n_calls_before = len(_log_names(log))
    res = batch.run_batch(root, out, study_fn=batch_fakes.fake_study, study_kwargs={"log": str(log)},
                          progress=None, figures=False)
    again = _log_names(log)[n_calls_before:]
    assert sorted(again) == sorted(set(names) - set(done_before))
    assert res.exit_code == 0 and res.n_skipped == len(done_before)
    assert {n: (out / n / "report.json").stat().st_mtime_ns for n in done_before} == mtimes
    rows = _rows(out / "summary.csv")
    assert [r["id"] for r in rows] == sorted(names) and all(r["status"] == "ok" for r in rows)
    assert not (out / ".tmp").exists()


def test_cli_batch_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root = batch_fakes.make_cohort(tmp_path / "in", {"patient001": "NOR", "patient002": "DCM"}, with_others=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["batch", str(empty), "--out", str(tmp_path / "o0")]) == 2
    assert "no studies found" in capsys.readouterr().err
    calls = []

    def fake(input_path: str, out_dir: str, **kw: object) -> dict:
        calls.append(kw)
        return batch_fakes.fake_study(input_path, out_dir, fail=("patient002",))

    monkeypatch.setattr(batch, "analyze_study", fake)
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o1"), "--no-figures"]) == 1
    table = tmp_path / "t.csv"
    table.write_text("id,height_cm\npatient001,170\npatient002,180\n")
    with warnings.catch_warnings():  # both ids are studies found: --limit does not make one "unknown"
        warnings.simplefilter("error", DeepStrainWarning)
        assert cli.main(["batch", str(root), "--out", str(tmp_path / "o2"), "--limit", "1", "--no-figures",
                         "--table", str(table)]) == 0
    assert len(_rows(tmp_path / "o2" / "summary.csv")) == 1
    gcsv = tmp_path / "g.csv"
    gcsv.write_text("id,group\npatient001,HCM\n")
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o2"), "--limit", "1", "--no-figures",
                     "--groups", str(gcsv)]) == 0
    assert _rows(tmp_path / "o2" / "summary.csv")[0]["group"] == "HCM"
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o3"), "--workers", "0"]) == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli.main(["batch", str(root), "--out", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # the analysis options reach the study function and are stored with the results
    calls.clear()
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o4"), "--limit", "1", "--no-figures", "--tta",
                     "all", "--precision", "float32", "--qc"]) == 0
    assert calls == [{"tta": "all", "precision": "float32", "weights_dir": None, "refine_motion": True, "qc": True}]
    stored = json.loads((tmp_path / "o4" / "settings.json").read_text())
    assert stored["options"] == calls[0] and stored["weights_sha256"]["motion"] == read_manifest()["models"]["motion"]["sha256"]
    # a re-run with other settings is refused, naming the settings file; nothing is analysed or changed
    before = (tmp_path / "o4" / "summary.csv").read_bytes()
    calls.clear()
    capsys.readouterr()
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o4"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "settings.json" in err and "options" in err and calls == []
    assert (tmp_path / "o4" / "summary.csv").read_bytes() == before
    # the same settings resume (the second study is analysed, the first kept)
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o4"), "--no-figures", "--tta",
                     "all", "--precision", "float32", "--qc"]) == 1  # patient002 fails by design of the fake
    # settings stored when tta was a bool (true: every frame) resume with --tta all; others are named
    settings_file = tmp_path / "o4" / "settings.json"
    legacy = json.loads(settings_file.read_text())
    legacy["options"]["tta"] = True
    settings_file.write_text(json.dumps(legacy))
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o4"), "--no-figures", "--tta",
                     "all", "--precision", "float32", "--qc"]) == 1
    capsys.readouterr()
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o4"), "--no-figures", "--tta",
                     "off", "--precision", "float32", "--qc"]) == 2
    assert "tta: 'all' stored, 'off' now" in capsys.readouterr().err
    # a weights folder without a manifest is refused before anything is written
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o5"), "--weights", str(empty)]) == 2
    assert "manifest" in capsys.readouterr().err and not (tmp_path / "o5").exists()
    # a study table's values reach the study function, naming their line
    scsv = tmp_path / "s.csv"
    scsv.write_text("id,height_cm,weight_kg\npatient001,180,80\n")
    calls.clear()
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o6"), "--limit", "1", "--no-figures",
                     "--table", str(scsv)]) == 0
    assert calls[0]["height_cm"] == 180 and calls[0]["weight_kg"] == 80
    assert calls[0]["given_source"] == f"study table {scsv} line 2"
    scsv.write_text("id,height_cm\npatient001,tall\n")
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o7"), "--table", str(scsv)]) == 2
    assert "height_cm 'tall' is not a number" in capsys.readouterr().err and not (tmp_path / "o7").exists()


def test_cli_batch_lists_the_studies_with_quality_findings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    from deepstrain.outputs import atomic_output_dir

    root = batch_fakes.make_cohort(tmp_path / "in", {"patient001": "NOR", "patient002": "DCM"}, with_others=False)

    def flagged(input_path: str, out_dir: str, **kw: object) -> dict:
        rep = batch_fakes.fake_report(input_path)
        rep["quality"] = ([{"check": "open_myocardium", "message": "m"}, {"check": "ef_outside_range", "message": "e"}]
                          if "patient001" in input_path else [])
        with atomic_output_dir(out_dir) as tmp:
            (tmp / "report.json").write_text(json.dumps(rep))
        return rep

    monkeypatch.setattr(batch, "analyze_study", flagged)
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o"), "--no-figures", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "quality checks: 1 of 2 studies have findings" in out
    assert "  patient001: open_myocardium, ef_outside_range" in out and "patient002:" not in out
    assert {r["id"]: r["quality"] for r in _rows(tmp_path / "o" / "summary.csv")} == {
        "patient001": "open_myocardium;ef_outside_range", "patient002": ""}


def test_study_table_is_read_strictly(tmp_path: Path) -> None:
    """Values by id, empty cells not given; every problem names the file and the line."""
    good = tmp_path / "studies.csv"
    good.write_text("ID,Group,height_cm,weight_kg,heart_rate_bpm,notes,slice_mm,row_mm,col_mm\n"
                    "a,NOR,180,80,,x,,,\nb,,165.5,,72,,10,1.64,1.64\nc,DCM,,,,,,,\n")
    table = batch.read_study_table(good)
    assert table["a"].group == "NOR" and table["a"].options == {"height_cm": 180.0, "weight_kg": 80.0}
    assert table["b"].group is None and table["b"].source == f"{good} line 3"
    assert table["b"].options == {"height_cm": 165.5, "heart_rate_bpm": 72.0, "spacing": (10.0, 1.64, 1.64)}
    assert table["c"].options == {}
    cases = {
        "id,spacing\na,10\n": "'spacing': name the unit in the header (slice_mm, row_mm, col_mm)",
        "id,slice_mm,row_mm,col_mm\na,10,1.5,\n": "line 2 (a): give all of slice_mm, row_mm, col_mm or none",
        "id,slice_mm,row_mm,col_mm\na,10,0,1.5\n": "line 2 (a): the voxel spacing must be positive",
        "id,slice_mm,row_mm,col_mm\na,nan,1,1.5\n": "line 2 (a): slice_mm 'nan' is not a finite number",
        "id,height\na,180\n": "'height': name the unit in the header (height_cm)",
        "id,hr\na,60\n": "name the unit in the header (heart_rate_bpm)",
        "id,weight_kg\na,80\na,81\n": "line 3: id 'a' listed twice",
        "id,weight_kg\na,eighty\n": "line 2 (a): weight_kg 'eighty' is not a number",
        "id,height_cm\na,1.8\n": "line 2 (a): height 1.8 cm is not plausible",
        "id,height_cm\na,inf\n": "line 2 (a): height_cm 'inf' is not a finite number",
        "id,height_cm\n,180\n": "line 2: empty id",
        "id,height_cm\na,180,3\n": "line 2: more cells than header columns",
        "id,notes\na,x\n": "none of the columns",
        "name,group\na,b\n": "an 'id' column",
    }
    for i, (text, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.csv"
        bad.write_text(text)
        with pytest.raises(InputError) as err:
            batch.read_study_table(bad)
        assert message in str(err.value) and str(bad) in str(err.value), str(err.value)
        if message == "an 'id' column":  # the groups reader goes through the same table reader
            with pytest.raises(InputError, match=message):
                batch.read_groups_csv(bad)
    no_group = tmp_path / "no_group.csv"
    no_group.write_text("id,weight_kg\na,80\n")
    with pytest.raises(InputError, match="no row gives a group"):
        batch.read_groups_csv(no_group)
    with pytest.raises(InputError, match="not found"):
        batch.read_study_table(tmp_path / "missing.csv")


def test_a_table_that_is_not_utf8_is_refused_naming_the_byte_and_the_remedy(tmp_path: Path, monkeypatch, capsys) -> None:
    """Excel's plain "CSV" is cp1252: an error naming the file, where the bad byte is and how to save
    it, never a traceback nor a guessed encoding. A UTF-8 file with a byte order mark is read."""
    cp1252 = tmp_path / "excel.csv"
    cp1252.write_bytes(b"id,group\npatient001,G\xe9n\n")
    for read in (batch.read_study_table, batch.read_groups_csv, batch.read_summary):
        with pytest.raises(InputError) as err:
            read(cp1252)
        message = str(err.value)
        assert message.startswith(f"{cp1252}: not UTF-8 text: byte at offset 21 (line 2) is 0xe9"), message
        assert "CSV UTF-8" in message
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes("\ufeffid,group\npatient001,Gén\n".encode())
    assert batch.read_groups_csv(with_bom) == {"patient001": "Gén"}
    assert batch.read_summary(with_bom) == [{"id": "patient001", "group": "Gén"}]
    with_bom.write_bytes(b"\xef\xbb\xbfid,group\npatient001,G\xe9n\n")  # the offset counts the mark
    with pytest.raises(InputError, match=r"byte at offset 24 \(line 2\) is 0xe9"):
        batch.read_study_table(with_bom)
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("id,group\npatient001,A\n".encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16 text, not UTF-8.*CSV UTF-8"):
        batch.read_study_table(utf16)
    root = batch_fakes.make_cohort(tmp_path / "in", {"patient001": "NOR"}, with_others=False)
    monkeypatch.setattr(batch, "analyze_study", batch_fakes.fake_study)
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o"), "--table", str(cp1252)]) == 2
    assert capsys.readouterr().err.startswith(f"deepstrain: error: {cp1252}: not UTF-8 text")
    assert not (tmp_path / "o").exists()


def test_table_lines_count_blank_lines_and_name_where_a_row_starts(tmp_path: Path, monkeypatch) -> None:
    """The line in messages and in the provenance of a study is the file's line where its row starts:
    blank lines (which the CSV reader skips) and the lines of a multi-line quoted cell count."""
    table = tmp_path / "t.csv"
    table.write_text('id,group,height_cm,notes\n\npatient001,NOR,180,"two\nlines"\n\npatient002,DCM,170,\n')
    got = batch.read_study_table(table)
    assert got["patient001"].source == f"{table} line 3"
    assert got["patient002"].source == f"{table} line 6"
    bad = tmp_path / "bad.csv"
    bad.write_text('id,height_cm,notes\n\na,180,"x\ny"\n\nb,tall,\n')
    with pytest.raises(InputError, match=r"line 6 \(b\): height_cm 'tall' is not a number"):
        batch.read_study_table(bad)
    bad.write_text('id,height_cm\n\na,180\n\na,181\n')
    with pytest.raises(InputError, match="line 5: id 'a' listed twice"):
        batch.read_study_table(bad)
    summary = tmp_path / "summary.csv"
    summary.write_text('id,group\n\na,"N\nOR"\n\nb\n')
    with pytest.raises(InputError, match="line 6: wrong number of cells"):
        batch.read_summary(summary)
    summary.write_text('id,group\n\na,"N\nOR"\n\nb,DCM\n')
    assert batch.read_summary(summary) == [{"id": "a", "group": "N\nOR"}, {"id": "b", "group": "DCM"}]
    # the provenance handed to the study names the same line
    root = batch_fakes.make_cohort(tmp_path / "in", {"patient001": "NOR", "patient002": "DCM"}, with_others=False)
    calls = []

    def fake(input_path: str, out_dir: str, **kw: object) -> dict:
        calls.append(kw)
        return batch_fakes.fake_study(input_path, out_dir)

    monkeypatch.setattr(batch, "analyze_study", fake)
    assert cli.main(["batch", str(root), "--out", str(tmp_path / "o"), "--no-figures", "--quiet",
                     "--table", str(table)]) == 0
    assert sorted(c["given_source"] for c in calls) == [f"study table {table} line 3", f"study table {table} line 6"]


def test_a_table_column_of_a_known_quantity_in_another_unit_is_refused(tmp_path: Path) -> None:
    """height_m, weight_lb... would be ignored silently (the study's own values used): refused, naming the
    column to use; columns of other things are still ignored."""
    table = tmp_path / "t.csv"
    table.write_text("id,group,height_m,weight_lb\npatient001,A,1.80,176\n")
    with pytest.raises(InputError) as err:
        batch.read_study_table(table)
    assert str(err.value) == (f"{table}: column 'height_m': the study table takes the height in cm as column "
                              "height_cm: rename it (converting its values to that unit)")
    cases = {
        "weight_lb": "the weight in kg as column weight_kg", "Weight (kg)": "weight in kg as column weight_kg",
        "heart_rate_per_min": "heart rate in beats/min as column heart_rate_bpm",
        "Heart rate": "name the unit in the header (heart_rate_bpm)",
        "hr_bpm": "as column heart_rate_bpm", "HR (bpm)": "as column heart_rate_bpm",
        "rr_ms": "60000 / the RR interval in ms", "spacing_mm": "as column slice_mm, row_mm, col_mm",
        "slice_cm": "rename it slice_mm", "row_in": "rename it row_mm", "column_mm": "rename it col_mm",
        "Slice (mm)": "rename it slice_mm",
    }
    for i, (column, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.csv"
        bad.write_text(f'id,group,"{column}"\na,NOR,1\n')
        with pytest.raises(InputError) as err:
            batch.read_study_table(bad)
        assert str(err.value).startswith(f"{bad}: column {column!r}: ") and message in str(err.value), str(err.value)
    # other columns are ignored as before, also a batch summary's own columns (a summary.csv given as groups)
    fine = tmp_path / "fine.csv"
    fine.write_text("id,group,HEIGHT_CM,notes,age_years,slice_spacing_mm,column_spacing_mm,bsa_m2,hrs_sleep\n"
                    "a,NOR,180,x,50,8,1.5,1.9,7\n")
    assert batch.read_study_table(fine)["a"].options == {"height_cm": 180.0}


def test_a_folder_given_as_a_table_is_named_a_folder(tmp_path: Path) -> None:
    for read in (batch.read_study_table, batch.read_summary):
        with pytest.raises(InputError) as err:
            read(tmp_path)
        assert str(err.value).startswith(f"{tmp_path}: is a folder, not a CSV file"), str(err.value)
        with pytest.raises(InputError, match="not found"):
            read(tmp_path / "missing.csv")


def _small_nifti_study(folder: Path, zooms: tuple[float, float, float] = (1.5, 1.5, 8.0)) -> dict[str, str]:
    """A 4D cine without body size in its header, with labels and zero motion on its grid (no networks)."""
    import nibabel as nib
    import numpy as np

    from deepstrain.cine import Geometry
    from deepstrain.io import save_displacement

    folder.mkdir(parents=True)
    aff = np.diag([*zooms, 1.0])
    x, z, t = 24, 4, 5
    cine = np.random.default_rng(0).random((x, x, z, t)).astype(np.float32)
    yy, xx = np.mgrid[:x, :x]
    r = np.hypot(xx - 12, yy - 12)
    labels = np.zeros((x, x, z, t), np.uint8)
    labels[r < 8] = 2
    labels[r < 5] = 3
    labels[(np.abs(xx - 3) < 2) & (np.abs(yy - 12) < 5)] = 1
    for name, data in (("cine", cine), ("cine_seg", labels)):
        img = nib.Nifti1Image(data, aff)
        img.header.set_zooms((*zooms, 40.0))
        img.header.set_xyzt_units("mm", "msec")
        nib.save(img, str(folder / f"{name}.nii.gz"))
    save_displacement(np.zeros((t, 3, z, x, x), np.float32), Geometry.from_nifti_affine(aff), folder / "disp.nii.gz")
    return {"segmentation": str(folder / "cine_seg.nii.gz"), "displacement": str(folder / "disp.nii.gz"),
            "ed": 0, "es": 2}


def test_study_table_indexes_a_cohort_and_a_changed_table_is_not_applied_silently(tmp_path: Path) -> None:
    """The real analysis of a NIfTI study (no body size in its header) gets height, weight and heart rate
    from the study table: indexed volumes and cardiac output in the report and the summary, with the
    table's line as their source. When the table changes later, the done study is reported failed and
    left as it was until its folder is removed; then it is analysed with the new values. A spacing in the
    table replaces the header's (the volumes scale with the voxel volume)."""
    kw = _small_nifti_study(tmp_path / "in")
    table = tmp_path / "subjects.csv"
    table.write_text("id,group,height_cm,weight_kg,heart_rate_bpm\ncine,NOR,180,80,75\nsomeone_else,DCM,170,70,\n")
    out = tmp_path / "out"
    with pytest.warns(DeepStrainWarning, match=r"subjects\.csv: 1 id\(s\) of the study table are not among the "
                                               r"studies found in .*: someone_else"):  # also without progress
        res = batch.run_batch(tmp_path / "in", out, table_csv=table, study_kwargs=kw, progress=None, figures=False)
    assert res.exit_code == 0
    rep = json.loads((out / "cine" / "report.json").read_text())
    source = f"study table {table} line 2"
    assert rep["subject"]["sources"] == {"height_cm": source, "weight_kg": source, "heart_rate_bpm": source}
    assert rep["subject"]["bsa_m2"] == pytest.approx(2.0) and rep["frames"]["times_ms"][1] == pytest.approx(800 / 5)
    vol = rep["volumetrics"]
    row = _rows(out / "summary.csv")[0]
    assert row["group"] == "NOR" and float(row["height_cm"]) == 180 and float(row["heart_rate_bpm"]) == 75
    # what was analysed, at a glance: frames, ED / ES and the voxel spacing used
    assert (int(row["frames"]), int(row["ed_frame"]), int(row["es_frame"])) == (
        rep["frames"]["count"], rep["frames"]["ed"], rep["frames"]["es"])
    assert [float(row[k]) for k in ("slice_spacing_mm", "row_spacing_mm", "column_spacing_mm")] == pytest.approx(
        rep["provenance"]["voxel_spacing_mm"])
    assert float(row["lv_edvi_ml_per_m2"]) == pytest.approx(vol["lv_edv_ml"] / 2.0, abs=1e-3)
    assert float(row["lv_cardiac_output_l_per_min"]) == pytest.approx(vol["lv_sv_ml"] * 75 / 1000, abs=1e-3)
    # the table changes: nothing is re-analysed or overwritten, the study is reported with the reason
    before = (out / "cine" / "report.json").read_bytes()
    table.write_text("id,height_cm,weight_kg\ncine,170,80\n")
    res2 = batch.run_batch(tmp_path / "in", out, table_csv=table, study_kwargs=kw, progress=None, figures=False)
    assert res2.exit_code == 1 and res2.n_failed == 1 and res2.n_skipped == 0
    err = _rows(out / "summary.csv")[0]["error"]
    assert f"height_cm is 170 in the study table ({table} line 2) but the study was analysed with 180" in err
    assert f"remove {out / 'cine'}" in err and (out / "cine" / "report.json").read_bytes() == before
    # without a table (or with its values) the study is done as it was
    assert batch.run_batch(tmp_path / "in", out, study_kwargs=kw, progress=None, figures=False).n_skipped == 1
    # a table that no longer gives a value the study was analysed with (emptied cell, column or line gone)
    for text, value, now in (
            ("id,height_cm,weight_kg,heart_rate_bpm\ncine,180,80,\n", "heart_rate_bpm 75", f"the study table ({table} line 2) gives none"),
            ("id,group\ncine,NOR\n", "height_cm 180", f"the study table ({table} line 2) gives none"),
            ("id,group\nother,NOR\n", "height_cm 180", "the study table has no line for it")):
        table.write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeepStrainWarning)  # the id 'other' is named (tested above)
            res_e = batch.run_batch(tmp_path / "in", out, table_csv=table, study_kwargs=kw, progress=None,
                                    figures=False)
        assert res_e.exit_code == 1 and res_e.n_failed == 1, text
        err = _rows(out / "summary.csv")[0]["error"]
        assert f"the study was analysed with {value} from the study table {table} line 2, but {now}" in err, err
        assert (out / "cine" / "report.json").read_bytes() == before
    table.write_text("id,height_cm,weight_kg\ncine,170,80\n")

    shutil.rmtree(out / "cine")
    res3 = batch.run_batch(tmp_path / "in", out, table_csv=table, study_kwargs=kw, progress=None, figures=False)
    assert res3.exit_code == 0 and res3.n_ok == 1
    rep3 = json.loads((out / "cine" / "report.json").read_text())
    assert rep3["subject"]["height_cm"] == 170 and rep3["subject"]["heart_rate_bpm"] is None
    assert rep3["provenance"]["voxel_spacing_mm"] == [8.0, 1.5, 1.5] and rep3["provenance"]["voxel_spacing_source"] == "input"
    # a spacing given by the table replaces the header's (here the header of the given labels and
    # motion says the same, as load_labels demands)
    kw2 = _small_nifti_study(tmp_path / "in2", zooms=(3.0, 3.0, 10.0))
    (tmp_path / "in2" / "cine.nii.gz").unlink()
    shutil.copy(tmp_path / "in" / "cine.nii.gz", tmp_path / "in2" / "cine.nii.gz")  # header: 1.5 x 1.5 x 8
    table.write_text("id,height_cm,weight_kg,slice_mm,row_mm,col_mm\ncine,170,80,10,3,3\n")
    out2 = tmp_path / "out2"
    assert batch.run_batch(tmp_path / "in2", out2, table_csv=table, study_kwargs=kw2, progress=None, figures=False).n_ok == 1
    rep4 = json.loads((out2 / "cine" / "report.json").read_text())
    assert rep4["provenance"]["voxel_spacing_mm"] == [10.0, 3.0, 3.0]
    assert rep4["provenance"]["voxel_spacing_source"] == f"study table {table} line 2"
    assert rep4["volumetrics"]["lv_edv_ml"] == pytest.approx(rep3["volumetrics"]["lv_edv_ml"] * 90 / 18, rel=1e-6)
    # ... and a done study analysed on another spacing is stale
    study = batch.discover_studies(tmp_path / "in", table=batch.read_study_table(table))[0]
    assert study.options["spacing"] == (10.0, 3.0, 3.0)
    problem = batch.table_mismatch(study, rep3)
    assert problem == (f"the voxel spacing (mm) is 10 x 3 x 3 in the study table ({table} line 2) but the study "
                       "was analysed with 8 x 1.5 x 1.5 (from input)")
    assert batch.table_mismatch(study, rep4) is None


def test_acdc_group_read_from_an_info_cfg_with_a_byte_order_mark(tmp_path):
    from deepstrain.batch import read_info_group

    cfg = tmp_path / "Info.cfg"
    cfg.write_bytes(b"\xef\xbb\xbfGroup: DCM\r\nED: 1\r\n")  # Group first, as Windows Notepad saves it
    assert read_info_group(cfg) == "DCM"
    cfg.write_bytes(b"\xff\xfe\x00")  # unreadable: no group (the study's own run reports the file)
    assert read_info_group(cfg) is None


def test_an_analysis_folder_is_not_taken_for_a_batch_folder(tmp_path: Path) -> None:
    """A folder another command wrote (an analysis, also one whose marker predates the kinds) is not
    a batch's output: batch refuses it and leaves it as it was."""
    from deepstrain.outputs import MARKER

    root = batch_fakes.make_cohort(tmp_path / "in", {"patient001": "NOR"}, with_others=False)
    for name, marker in (("new", "Written by deepstrain (analysis)\nkind: analysis\n"),
                         ("old", "Written by deepstrain; `--overwrite` may replace this folder.\n")):
        out = tmp_path / name
        out.mkdir()
        (out / MARKER).write_text(marker)
        (out / "report.json").write_text("{}")
        with pytest.raises(InputError, match="not a batch output folder"):
            batch.run_batch(root, out, study_fn=batch_fakes.fake_study, progress=None, figures=False)
        assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "report.json"])


def test_sigterm_stops_a_pool_batch_at_once(tmp_path: Path) -> None:
    """SIGTERM to a batch with worker processes (the ``deepstrain`` command handles it as Ctrl-C)
    stops it at once: the queued studies are cancelled and the workers stopped, not waited for."""
    names = {f"patient{i:03d}": "NOR" for i in range(1, 7)}
    root = batch_fakes.make_cohort(tmp_path / "in", names, with_others=False)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import batch_fakes
        from deepstrain import batch, cli
        with cli._sigterm_as_interrupt([]):
            try:
                batch.run_batch({str(root)!r}, {str(out)!r}, workers=2, threads=1, study_fn=batch_fakes.fake_study,
                                study_kwargs={{"delay": 60, "log": {str(log)!r}}}, progress=None, figures=False)
            except KeyboardInterrupt:
                sys.exit(143)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len(_log_names(log) if log.exists() else []) < 2:  # both workers are in a study
            assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 143  # not after the 60 s studies (3 rounds of them)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pids = {int(line.split()[1]) for line in log.read_text().splitlines()}
    time.sleep(1.0)
    for pid in pids:  # the workers are gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(p.name.startswith("patient") for p in out.iterdir())
