"""The command line end to end: bad input gives one clear error, exit 2, and writes nothing."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepstrain.cine import Geometry
from deepstrain.cli import main
from deepstrain.io import save_displacement


def _nifti(path: Path, data: np.ndarray, zooms=(1.5, 1.5, 8.0, 40.0)) -> Path:
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 8.0, 1.0]))
    img.header.set_zooms(zooms[: min(data.ndim, 4)])
    img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(path))
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, Path]:
    """A small 4D cine with labels and zero displacement on its grid (no networks needed)."""
    rng = np.random.default_rng(0)
    x, y, z, t = 24, 24, 4, 5
    cine = rng.random((x, y, z, t)).astype(np.float32)
    labels = np.zeros((x, y, z, t), np.uint8)
    yy, xx = np.mgrid[:x, :y]
    r = np.hypot(xx - 12, yy - 12)
    for k in range(z):
        labels[..., k, :][r < 5] = 3
        labels[..., k, :][(r >= 5) & (r < 8)] = 2
        labels[..., k, :][(np.abs(xx - 3) < 2) & (np.abs(yy - 12) < 5)] = 1
    d = tmp_path / "in"
    d.mkdir()
    files = {
        "cine": _nifti(d / "cine.nii.gz", cine),
        "labels": _nifti(d / "labels.nii.gz", labels),
        "disp": d / "disp.nii.gz",
        "dir": d,
    }
    geometry = Geometry.from_nifti_affine(np.diag([1.5, 1.5, 8.0, 1.0]))
    save_displacement(np.zeros((t, 3, z, y, x), np.float32), geometry, files["disp"])
    return files


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_analyze_body_size_options(study, tmp_path, capsys):
    """--height/--weight index the volumes (printed and in the report); an implausible value is refused
    before anything is written."""
    base = ["analyze", str(study["cine"]), "--segmentation", str(study["labels"]), "--displacement",
            str(study["disp"]), "--ed", "0", "--es", "2", "--quiet"]
    out = tmp_path / "out"
    assert main(base + ["--out", str(out), "--height", "180", "--weight", "80"]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["subject"]["bsa_m2"] == 2.0 and rep["subject"]["sources"] == {"height_cm": "--height", "weight_kg": "--weight"}
    edvi = rep["volumetrics"]["lv_edvi_ml_per_m2"]
    assert edvi == pytest.approx(rep["volumetrics"]["lv_edv_ml"] / 2.0, abs=1e-3)
    assert f"indexed to BSA 2.00 m2: EDVi {edvi:.1f} ml/m2" in printed
    bad = tmp_path / "bad"
    assert main(base + ["--out", str(bad), "--height", "1.8", "--weight", "80"]) != 0
    err = capsys.readouterr().err
    assert "height 1.8 cm is not plausible" in err and str(study["cine"]) in err
    assert not bad.exists()


@pytest.mark.parametrize("where", ["input folder", "its parent"])
def test_overwrite_never_deletes_the_input_or_a_users_folder(study, tmp_path, capsys, where):
    out = study["dir"] if where == "input folder" else tmp_path
    (study["dir"] / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in study["dir"].iterdir()}
    code = main(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]),
                 "--displacement", str(study["disp"]), "--ed", "0", "--es", "2", "--out", str(out),
                 "--overwrite", "--quiet"])
    assert code == 2
    assert "contains, the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in study["dir"].iterdir()} == before
    # a folder of the user's that holds no input is not replaced either
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    code = main(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]),
                 "--displacement", str(study["disp"]), "--ed", "0", "--es", "2", "--out", str(other),
                 "--overwrite", "--quiet"])
    assert code == 2 and "not written by deepstrain" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_network_options_with_given_labels_and_motion_are_reported_as_ignored(study, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]), "--displacement",
                 str(study["disp"]), "--ed", "0", "--es", "2", "--out", str(out), "--quiet", "--tta",
                 "all", "--weights", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "--tta and --weights ignored" in err
    assert any("--tta and --weights ignored" in w for w in json.loads((out / "report.json").read_text())["warnings"])


def test_analyze_with_given_labels_and_motion_writes_all_outputs(study, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]),
                 "--displacement", str(study["disp"]), "--ed", "0", "--es", "2", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        ".deepstrain-output", "displacement.nii.gz", "report.json", "results.csv", "segmentation.nii.gz", "slices.csv", "strain.csv"]
    printed = captured.out
    rep = json.loads((out / "report.json").read_text())
    assert rep["frames"]["count"] == 5
    # the automatic checks run and are printed (one line per finding, or 'no finding')
    assert isinstance(rep["quality"], list)
    assert "quality checks:" in printed
    assert all(f"- {q['check']}: {q['message']}" in printed for q in rep["quality"])
    assert rep["ess"]["radial"] == pytest.approx(0.0, abs=1e-6)  # zero motion, zero strain
    seg = nib.load(str(out / "segmentation.nii.gz"))
    np.testing.assert_allclose(seg.affine, nib.load(str(study["cine"])).affine)
    # the frame interval of the input (40 ms) goes with the 4D outputs, so viewers play them in time
    assert seg.header.get_zooms()[3] == pytest.approx(40.0)
    assert nib.load(str(out / "displacement.nii.gz")).header.get_zooms()[3] == pytest.approx(40.0)
    assert nib.load(str(out / "segmentation.nii.gz")).header.get_xyzt_units() == ("mm", "msec")
    # the same output folder again is refused, not overwritten
    before = _digest(out)
    code, err = _run(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]),
                      "--displacement", str(study["disp"]), "--ed", "0", "--es", "2",
                      "--out", str(out), "--quiet"], capsys)
    assert code == 2 and "not empty" in err
    assert _digest(out) == before
    # --qc adds the picture, and only it
    code, err = _run(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]),
                      "--displacement", str(study["disp"]), "--ed", "0", "--es", "2",
                      "--out", str(tmp_path / "qc"), "--quiet", "--qc"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == sorted(list(before) + ["qc.png"])
    assert (tmp_path / "qc" / "report.json").read_bytes() == (out / "report.json").read_bytes()


def test_rv_insertion_point_orients_the_aha_segments(study, tmp_path, capsys):
    """--rv-insertion R A S: recorded in the report's aha_reference; a point on the LV axis, or
    a not-finite one, is a clear error (exit 2, no output)."""
    common = [str(study["cine"]), "--segmentation", str(study["labels"]), "--displacement", str(study["disp"]),
              "--ed", "0", "--es", "2", "--quiet"]
    code, err = _run(["analyze", *common, "--out", str(tmp_path / "auto")], capsys)
    assert code == 0, err
    auto = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert auto["aha_reference"] == {"septum_from": "RV contact of the ED labels", "rv_insertion_ras": None}
    # the LV centre is at voxel (12, 12): RAS (18, 18); the point 10 mm to its right, mid-ventricle
    code, err = _run(["analyze", *common, "--out", str(tmp_path / "given"), "--rv-insertion", "28", "18", "8"], capsys)
    assert code == 0, err
    given = json.loads((tmp_path / "given" / "report.json").read_text())
    assert given["aha_reference"] == {"septum_from": "given anterior RV insertion point",
                                      "rv_insertion_ras": [28.0, 18.0, 8.0]}
    for point, words in ((["18", "18", "8"], "from the LV centre"), (["nan", "0", "0"], "three finite numbers")):
        out = tmp_path / f"bad{point[0]}"
        code, err = _run(["analyze", *common, "--out", str(out), "--rv-insertion", *point], capsys)
        assert code == 2 and words in err and "cine.nii.gz" in err and not out.exists(), err


def _bad_cases(study: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (extra CLI args, file the message must name, words the message must contain)."""
    trunc = tmp / "truncated.nii.gz"
    trunc.write_bytes(study["cine"].read_bytes()[:2000])
    two_d = _nifti(tmp / "twod.nii.gz", np.ones((24, 24), np.float32))
    one = _nifti(tmp / "one.nii.gz", np.ones((24, 24, 4, 1), np.float32))
    nan = np.asarray(nib.load(str(study["cine"])).dataobj).copy()
    nan[3, 3, 1, 2] = np.nan
    nanf = _nifti(tmp / "nan.nii.gz", nan)
    small = _nifti(tmp / "small_labels.nii.gz", np.zeros((20, 24, 4, 5), np.uint8))
    wrong = np.asarray(nib.load(str(study["labels"])).dataobj).copy()
    wrong[0, 0, 0, 0] = 7
    wrongf = _nifti(tmp / "wrong_labels.nii.gz", wrong)
    c, lab, dsp = str(study["cine"]), str(study["labels"]), str(study["disp"])
    return {
        "missing": ([str(tmp / "nope.nii.gz"), "--segmentation", lab, "--displacement", dsp],
                    "nope.nii.gz", ""),
        "truncated": ([str(trunc), "--segmentation", lab, "--displacement", dsp], "truncated.nii.gz", ""),
        "2d": ([str(two_d), "--segmentation", lab, "--displacement", dsp], "twod.nii.gz", ""),
        "one frame": ([str(one), "--segmentation", lab, "--displacement", dsp], "one.nii.gz", "frame"),
        "nan": ([str(nanf), "--segmentation", lab, "--displacement", dsp], "nan.nii.gz", "NaN"),
        "labels grid": ([c, "--segmentation", str(small), "--displacement", dsp], "small_labels.nii.gz", ""),
        "label values": ([c, "--segmentation", str(wrongf), "--displacement", dsp], "wrong_labels.nii.gz", "7"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "2d", "one frame", "nan", "labels grid", "label values"])
def test_bad_input_one_clear_error_no_output_inputs_untouched(case, study, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    args, names, words = _bad_cases(study, bad)[case]
    inputs_before = {**_digest(study["dir"]), **_digest(bad)}
    out = tmp_path / "out"
    code, err = _run(["analyze", *args, "--out", str(out), "--quiet"], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("deepstrain: error:")]
    assert len(lines) == 1, err
    assert names in lines[0] and words in lines[0], lines[0]
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no partial folder
    assert {**_digest(study["dir"]), **_digest(bad)} == inputs_before


def test_console_script_exit_status(study, tmp_path):
    """The installed entry point (python -m deepstrain.cli) exits non-zero on bad input."""
    proc = subprocess.run([sys.executable, "-m", "deepstrain.cli", "analyze", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_version_names_the_package_and_the_shipped_weights(capsys):
    from deepstrain import __version__
    from deepstrain.weights import read_manifest

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"deepstrain {__version__}" in text
    for name, m in read_manifest()["models"].items():
        assert f"{name} {m['date']} sha256 {m['sha256'][:12]}" in " ".join(text.split())


def test_the_tools_warnings_show_as_one_line_each(study, tmp_path, capsys):
    """A file without frame timing: the warning reads 'deepstrain: warning: <file>: ...', without Python's source line."""
    img = nib.load(str(study["cine"]))
    untimed = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    untimed.header.set_zooms((1.5, 1.5, 8.0, 1.0))
    untimed.header.set_xyzt_units("mm", "unknown")
    study["cine"] = tmp_path / "untimed.nii.gz"
    nib.save(untimed, str(study["cine"]))
    code, err = _run(["analyze", str(study["cine"]), "--segmentation", str(study["labels"]), "--displacement",
                      str(study["disp"]), "--ed", "0", "--es", "2", "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert lines and all(ln.startswith("deepstrain: warning: ") for ln in lines)
    assert any(str(study["cine"]) in ln and "--heart-rate" in ln for ln in lines)
    assert "io.load_cine(" not in err and "DeepStrainWarning" not in err


def test_ctrl_c_is_one_line_and_says_how_to_go_on(monkeypatch, capsys):
    from deepstrain import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_batch", interrupted)
    assert cli.main(["batch", "in", "--out", "out"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("deepstrain: interrupted") and "run the same command again" in err and "Traceback" not in err


def test_sigterm_removes_the_unfinished_output_and_exits_143(monkeypatch, capsys, tmp_path):
    """A job scheduler's or `timeout`'s stop (SIGTERM) is handled as Ctrl-C: the output being written
    is removed, nothing is left beside it, exit status 143; the handler before it is restored."""
    import os
    import signal

    from deepstrain import cli
    from deepstrain.outputs import atomic_output_dir

    def stopped_while_writing(args):
        with atomic_output_dir(tmp_path / "cmp", kind="compare") as tmp:
            (tmp / "agreement.csv").write_text("metric\n")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_cmd_compare", stopped_while_writing)
    assert cli.main(["compare", "a.csv", "b.csv", "--out", str(tmp_path / "cmp")]) == 143
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.startswith("deepstrain: terminated, no partial output kept")
    assert signal.getsignal(signal.SIGTERM) == before
