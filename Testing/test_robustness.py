"""Robustness study: perturbations are what they claim, differences are computed and judged."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import batch_fakes
from deepstrain import batch, cli, robustness
from deepstrain.errors import InputError
from deepstrain.io import DeepStrainWarning


def _acdc_folder(root: Path) -> Path:
    """A tiny ACDC-like folder with the ACDC header quirk (sform without voxel size, zooms in pixdim)."""
    d = root / "patient042"
    d.mkdir(parents=True)
    (d / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\nNbFrame: 2\n")
    rng = np.random.default_rng(1)
    for k in (1, 2):
        img = np.zeros((12, 10, 3), np.int16)
        img[3:9, 2:8] = rng.integers(50, 200, (6, 6, 3))
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(img.shape)
        hdr.set_data_dtype(np.int16)
        hdr.set_zooms((1.5, 1.5, 10.0))
        hdr.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
        hdr.set_qform(None, code=0)
        nib.save(nib.Nifti1Image(img, None, header=hdr), str(d / f"patient042_frame{k:02d}.nii.gz"))
        lab = (img > 0).astype(np.uint8) * 2
        nib.save(nib.Nifti1Image(lab, None, header=hdr.copy()), str(d / f"patient042_frame{k:02d}_gt.nii.gz"))
    return d


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_perturb_image() -> None:
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 100, (8, 6, 3, 4)).astype(np.float32)
    s = robustness.perturb_image(d, "shift")
    assert np.array_equal(s[1:], d[:-1]) and np.array_equal(s[0], d[0])
    assert np.allclose(robustness.perturb_image(d, "scale"), 1.2 * d)
    flat = np.full((60, 60, 4), 100.0, np.float32)
    n1 = robustness.perturb_image(flat, "noise", snr=20, rng=np.random.default_rng(5))
    n2 = robustness.perturb_image(flat, "noise", snr=20, rng=np.random.default_rng(5))
    assert np.array_equal(n1, n2)  # seeded
    assert np.std(n1) == pytest.approx(100 / 20, rel=0.05)  # sigma = S / SNR at high SNR
    assert np.all(n1 >= 0)  # magnitude (Rician) data
    with pytest.raises(ValueError):
        robustness.perturb_image(d, "blur")


def test_perturbed_copy_keeps_header_and_inputs(tmp_path: Path) -> None:
    src = _acdc_folder(tmp_path / "in")
    before = _digest(src)
    copy = robustness.perturbed_copy(src, "shift", tmp_path / "work")
    assert _digest(src) == before  # the user's input is untouched
    assert sorted(p.name for p in copy.iterdir()) == sorted(before)
    for name in ("patient042_frame01.nii.gz", "patient042_frame01_gt.nii.gz"):
        a, b = nib.load(str(src / name)), nib.load(str(copy / name))
        assert b.header.get_zooms() == a.header.get_zooms()
        assert int(b.header["sform_code"]) == 2 and int(b.header["qform_code"]) == 0
        assert np.allclose(b.affine, a.affine)
        assert np.array_equal(np.asarray(b.dataobj)[1:], np.asarray(a.dataobj)[:-1])
    scaled = robustness.perturbed_copy(src, "scale", tmp_path / "work2")
    assert (scaled / "Info.cfg").read_text() == (src / "Info.cfg").read_text()
    gt = "patient042_frame02_gt.nii.gz"
    assert np.array_equal(nib.load(str(scaled / gt)).dataobj, nib.load(str(src / gt)).dataobj)
    with pytest.raises(InputError):
        robustness.perturbed_copy(tmp_path / "work2", "scale", tmp_path / "w3")  # no Info.cfg, not a file


def test_robustness_study_numbers(tmp_path: Path) -> None:
    src = _acdc_folder(tmp_path / "in")
    res = robustness.robustness_study(src, tmp_path / "rob", study_fn=batch_fakes.perturbation_sensitive_study)
    rows = {r["name"]: r for r in res["perturbations"]}
    assert list(rows) == ["shift", "noise", "scale"]
    base = batch.load_report(tmp_path / "rob" / "baseline")
    for name, r in rows.items():
        rep = batch.load_report(tmp_path / "rob" / name)
        assert r["ess_radial_diff_percent"] == pytest.approx(rep["ess"]["radial"] - base["ess"]["radial"])
        assert r == {**r, **robustness.compare_reports(base, rep)}
    # the fake's radial ESS is the mean intensity: a zero-bordered shift keeps it, x1.2 scales it
    assert rows["shift"]["ess_radial_diff_percent"] == pytest.approx(0.0, abs=1e-4)
    assert rows["scale"]["ess_radial_diff_percent"] == pytest.approx(0.2 * base["ess"]["radial"], rel=1e-4)
    # segments are ESS + segment number in the fake: every segment moves by dESS
    assert rows["scale"]["segments_radial_max_abs_diff_percent"] == pytest.approx(abs(rows["scale"]["ess_radial_diff_percent"]))
    assert rows["scale"]["n_segment_values"] == 32  # 16 segments x radial and circumferential
    assert rows["shift"]["within_tolerance"] is True and rows["scale"]["within_tolerance"] is False
    assert rows["noise"]["ess_circumferential_diff_percent"] != 0
    saved = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert [r["name"] for r in saved["perturbations"]] == ["shift", "noise", "scale"]
    assert (tmp_path / "rob" / "robustness.csv").read_text().count("\n") == 4
    assert not (tmp_path / "rob" / ".inputs").exists()


def _fails_on_noise(input_path: str, out_dir: str) -> dict:
    if "/noise/" in input_path:
        raise RuntimeError("simulated network failure")
    return batch_fakes.perturbation_sensitive_study(input_path, out_dir)


def _no_lv_in_noise(input_path: str, out_dir: str) -> dict:
    if "/noise/" in input_path:  # what the analysis raises when the noise hides the heart
        raise InputError(input_path, "no left ventricle found in the image")
    return batch_fakes.perturbation_sensitive_study(input_path, out_dir)


def test_an_analysis_error_of_a_perturbed_copy_is_a_result(tmp_path: Path) -> None:
    """The analysis of a perturbed copy failing on its content (an InputError) is recorded in its
    row, named after the copy (not the scratch path), and the other perturbations still count."""
    src = _acdc_folder(tmp_path / "in")
    res = robustness.robustness_study(src, tmp_path / "rob", study_fn=_no_lv_in_noise)
    rows = {r["name"]: r for r in res["perturbations"]}
    assert rows["noise"]["within_tolerance"] is False
    assert rows["noise"]["error"].startswith(f"<noise copy of {src.name}>: no left ventricle found")
    assert rows["shift"]["error"] == "" and (tmp_path / "rob").is_dir()


def test_failures_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _acdc_folder(tmp_path / "in")
    res = robustness.robustness_study(src, tmp_path / "rob", study_fn=_fails_on_noise)
    noise = [r for r in res["perturbations"] if r["name"] == "noise"][0]
    assert "simulated network failure" in noise["error"] and noise["within_tolerance"] is False
    monkeypatch.setattr(batch, "analyze_study", batch_fakes.perturbation_sensitive_study)
    assert cli.main(["robustness", str(src), "--out", str(tmp_path / "r2")]) == 1  # scale is outside
    assert cli.main(["robustness", str(src), "--out", str(tmp_path / "r2")]) == 2  # not overwritten
    assert cli.main(["robustness", str(tmp_path / "nope"), "--out", str(tmp_path / "r3")]) == 2


def test_overrides_reach_every_analysis_and_reports_name_the_copy_not_the_scratch_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--spacing (and the other overrides of analyze) go to the baseline and every perturbed analysis;
    a perturbed report names its copy, not the scratch folder deleted afterwards; the baseline's
    quality findings are listed."""
    src = _acdc_folder(tmp_path / "in")
    calls = []

    def study(input_path: str, out_dir: str, **kw) -> dict:
        calls.append(kw)
        rep = batch_fakes.perturbation_sensitive_study(input_path, out_dir)
        rep["warnings"] = [f"{input_path}/Info.cfg: a warning naming the input"]
        warnings.warn(rep["warnings"][0], DeepStrainWarning, stacklevel=1)  # printed on the console
        rep["quality"] = [{"check": "heart_size", "message": "m"}]
        (Path(out_dir) / "report.json").write_text(json.dumps(rep))
        return rep

    monkeypatch.setattr(batch, "analyze_study", study)
    out = tmp_path / "résultats"  # written \u00e9-escaped in the JSON: the names are replaced in its strings
    assert cli.main(["robustness", str(src), "--out", str(out), "--spacing", "10", "1.5", "1.5", "--es", "1"]) == 1
    assert calls == [{"spacing": (10.0, 1.5, 1.5), "es": 1}] * 4
    shifted = json.loads((out / "shift" / "report.json").read_text())
    assert shifted["warnings"] == [f"<shift copy of {src.name}>/{src.name}/Info.cfg: a warning naming the input"]
    console = capsys.readouterr().err
    assert f"<shift copy of {src.name}>/{src.name}/Info.cfg: a warning naming the input" in console
    assert ".inputs" not in console and console.count("a warning naming the input") == 4
    assert json.loads((out / "robustness.json").read_text())["baseline_quality"] == ["heart_size"]


def test_an_input_the_perturbations_cannot_copy_is_refused_before_any_analysis(tmp_path: Path) -> None:
    folder = tmp_path / "dicom_or_ukbb"
    folder.mkdir()
    calls = []
    with pytest.raises(InputError, match="robustness perturbs a 4D NIfTI file or an ACDC patient folder"):
        robustness.robustness_study(folder, tmp_path / "r", study_fn=lambda *a, **k: calls.append(a))
    assert calls == [] and not (tmp_path / "r").exists()
    single = tmp_path / "one_frame.nii.gz"  # a 3D NIfTI is not a cine either
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), str(single))
    with pytest.raises(InputError, match="robustness perturbs a 4D NIfTI file"):
        robustness.robustness_study(single, tmp_path / "r", study_fn=lambda *a, **k: calls.append(a))
    assert calls == []
