"""deepstrain.analyze: the whole pipeline (networks included) from a path to an output folder."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
import pytest

import deepstrain
from deepstrain import phantom
from deepstrain.analyze import analyze_path
from deepstrain.cli import main
from deepstrain.weights import WEIGHTS_DIR, read_manifest


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    ph = phantom.generate_phantom(phantom.PhantomParams(
        n_frames=6, matrix_size=96, pv_samples=1, seed=4321, heart_rate_bpm=75))
    out = tmp_path_factory.mktemp("study") / "ph"
    phantom.write_phantom(ph, out)
    return out


def test_same_input_twice_gives_identical_outputs(small_study, tmp_path):
    cine = small_study / "cine.nii.gz"
    before = _digest(small_study)
    r1 = analyze_path(cine, tmp_path / "a")
    r2 = analyze_path(cine, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert r1 == r2
    assert _digest(small_study) == before  # the input folder is untouched
    assert sorted(_digest(tmp_path / "a")) == [
        ".deepstrain-output", "displacement.nii.gz", "report.json", "results.csv", "segmentation.nii.gz", "slices.csv", "strain.csv"]
    seg = nib.load(str(tmp_path / "a" / "segmentation.nii.gz"))
    src = nib.load(str(cine))
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    disp = nib.load(str(tmp_path / "a" / "displacement.nii.gz"))
    assert disp.shape == src.shape + (3,)
    # the phantom has timing (75 bpm): strain rates are reported
    assert r1["srs"]["circumferential"] is not None and r1["frames"]["count"] == 6
    # the report says what produced it
    prov = r1["provenance"]
    shipped = read_manifest()["models"]
    assert prov["segmentation"] == prov["motion"] == "networks" and prov["weights"]["weights_dir"] == "package"
    for name in ("centring", "segmentation", "motion"):
        assert prov["weights"][name]["sha256"] == shipped[name]["sha256"]
    assert prov["precision"] in ("float32", "bfloat16") and prov["deepstrain_version"] == deepstrain.__version__


def test_other_weights_folder_is_used_and_checked(small_study, tmp_path, capsys):
    """--weights DIR: a verified copy gives the same result (provenance names the folder); a corrupt
    file in it is refused by name, exit 2, no output folder."""
    wdir = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, wdir)
    cine = small_study / "cine.nii.gz"
    r1 = analyze_path(cine, tmp_path / "a")
    r2 = analyze_path(cine, tmp_path / "b", weights_dir=wdir)
    assert r2["provenance"]["weights"]["weights_dir"] == str(wdir.resolve())
    assert {k: v for k, v in r1.items() if k != "provenance"} == {k: v for k, v in r2.items() if k != "provenance"}
    blob = bytearray((wdir / "motion.pt").read_bytes())
    blob[-100] ^= 0xFF
    (wdir / "motion.pt").write_bytes(bytes(blob))
    code = main(["analyze", str(cine), "--out", str(tmp_path / "c"), "--weights", str(wdir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "motion.pt" in err and "corrupt" in err, err
    assert not (tmp_path / "c").exists()


def test_refined_motion_changes_the_motion_only_and_is_recorded(small_study, tmp_path):
    cine = small_study / "cine.nii.gz"
    r0 = analyze_path(cine, tmp_path / "a", refine_motion=False)
    r1 = analyze_path(cine, tmp_path / "b")  # refined: the default
    assert r0["provenance"]["motion_refined_with_segmentation"] is False
    assert r1["provenance"]["motion_refined_with_segmentation"] is True
    seg = [np.asarray(nib.load(str(tmp_path / d / "segmentation.nii.gz")).dataobj) for d in "ab"]
    np.testing.assert_array_equal(seg[0], seg[1])
    disp = [np.asarray(nib.load(str(tmp_path / d / "displacement.nii.gz")).dataobj) for d in "ab"]
    assert not np.array_equal(disp[0], disp[1]) and not disp[1][..., 0, :].any()  # ED stays zero
    assert r0["volumetrics"] == r1["volumetrics"] and r0["ess"] != r1["ess"]
    analyze_path(cine, tmp_path / "c")
    assert _digest(tmp_path / "b") == _digest(tmp_path / "c")  # deterministic



def test_given_labels_refine_the_network_motion(small_study, tmp_path):
    """With a given segmentation and network motion, the motion is refined with the given labels."""
    cine = small_study / "cine.nii.gz"
    given = analyze_path(cine, tmp_path / "a", segmentation=small_study / "labels.nii.gz")
    assert given["provenance"]["segmentation"] == "given" and given["provenance"]["motion"] == "networks"
    assert given["provenance"]["motion_refined_with"] == "given segmentation"
    own = analyze_path(cine, tmp_path / "b")
    assert own["provenance"]["motion_refined_with"] == "network segmentation"
    plain = analyze_path(cine, tmp_path / "c", segmentation=small_study / "labels.nii.gz", refine_motion=False)
    assert "motion_refined_with" not in plain["provenance"]
    disp = [np.asarray(nib.load(str(tmp_path / d / "displacement.nii.gz")).dataobj) for d in "abc"]
    assert not np.array_equal(disp[0], disp[1]) and not np.array_equal(disp[0], disp[2])

def test_given_labels_and_motion_are_recorded_as_given(small_study, tmp_path):
    rep = analyze_path(small_study / "cine.nii.gz", tmp_path / "a", segmentation=small_study / "labels.nii.gz",
                       displacement=small_study / "displacement.nii.gz")
    assert rep["provenance"]["segmentation"] == rep["provenance"]["motion"] == "given"
    assert "weights" not in rep["provenance"]  # no network ran


def test_acdc_two_frame_folder_writes_a_label_file_per_input_frame(shared_data, tmp_path):
    folder = shared_data / "acdc" / "training" / "patient065"  # a validation patient
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = analyze_path(folder, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    frames = sorted(p.name for p in folder.glob("patient065_frame??.nii.gz"))
    # ed / es index the two output frames; cycle_frames gives the numbers --ed / --es take
    numbers = [int(f[len("patient065_frame"):][:2]) - 1 for f in frames]
    assert (rep["frames"]["ed"], rep["frames"]["es"]) == (0, 1) and rep["frames"]["cycle_frames"] == numbers
    for f in frames:
        seg_name = f.replace(".nii.gz", "_seg.nii.gz")
        assert seg_name in names
        seg = nib.load(str(tmp_path / "out" / seg_name))
        img = nib.load(str(folder / f))
        assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
        gt = np.asarray(nib.load(str(folder / f.replace(".nii.gz", "_gt.nii.gz"))).dataobj)
        lv = np.asarray(seg.dataobj) == 3
        dice = 2 * (lv & (gt == 3)).sum() / (lv.sum() + (gt == 3).sum())
        assert dice > 0.85, (f, dice)
    assert rep["frames"]["count"] == 2 and rep["frames"]["ed"] == 0 and rep["frames"]["es"] == 1
    # two frames: end-systolic strain, no strain rate; thickening and shortening signs
    assert rep["ess"]["radial"] > 0 and rep["ess"]["circumferential"] < 0
    assert rep["srs"]["radial"] is None
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == rep


def test_networks_run_again_from_the_provenance_reproduce_the_motion(small_study):
    """network_motion_again: the same crop, reference frame and weights as the report records give
    the same raw motion; reproduces() accepts the stored field and rejects a changed one; other
    weights or an older report are refused with the reason."""
    from deepstrain import io
    from deepstrain.analyze import analyze_cine, network_motion_again
    from deepstrain.refinement import reproduces

    cine = io.load_cine(small_study / "cine.nii.gz")
    first = analyze_cine(cine, keep_network_motion=True)
    prov = first.report["provenance"]
    assert prov["motion_reference_frame"] == first.ed and len(prov["crop_centre_voxel"]) == 2
    cine.ed = None  # not needed: the reference frame comes from the report
    state = network_motion_again(cine, json.loads(json.dumps(prov)))  # as read back from report.json
    for name in ("displacement_vox", "probabilities", "labels"):
        np.testing.assert_array_equal(getattr(state, name), getattr(first.network_motion, name))
    assert state.ed == first.ed and state.crop == first.network_motion.crop
    same, mm = reproduces(state, first.displacement, first.labels, refined=True)
    assert same and mm < 1e-5
    from deepstrain.refinement import motion_for_labels

    made = motion_for_labels(state, first.labels, refine=True)  # given instead of made again: same answer
    assert reproduces(state, first.displacement, first.labels, refined=True, motion=made) == (same, mm)
    assert not reproduces(state, first.displacement, first.labels, refined=False)[0]  # refined, not raw
    moved = first.displacement.copy()
    moved[[f for f in range(moved.shape[0]) if f != first.ed]] += 0.05  # 0.05 mm everywhere
    assert not reproduces(state, moved, first.labels, refined=True)[0]
    # ED edited by hand (every frame's refinement changes): the stored motion was refined with the
    # networks' ED (the edit saved before any Recompute) or with the edited one; both are recognised
    edited = first.labels.copy()
    ed_lab = edited[first.ed]
    ed_lab[(ed_lab == 3) & ndimage.binary_dilation(ed_lab == 2)] = 2
    assert reproduces(state, first.displacement, edited, refined=True)[0]
    assert reproduces(state, motion_for_labels(state, edited, refine=True), edited, refined=True)[0]
    other = json.loads(json.dumps(prov))
    other["weights"]["segmentation"]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="segmentation weights .* not the ones"):
        network_motion_again(cine, other)
    older = {k: v for k, v in prov.items() if k != "crop_centre_voxel"}
    with pytest.raises(ValueError, match="crop_centre_voxel"):
        network_motion_again(cine, older)
    # the frames flipped are recorded and flipped again; a report from before they were recorded
    # (test_time_flips a bool) is run with the flips it says: none here
    assert prov["test_time_flips"] == "ed-es" and set(prov["test_time_flipped_frames"]) >= {first.ed}
    legacy = {k: v for k, v in prov.items() if k != "test_time_flipped_frames"}
    legacy["test_time_flips"] = False
    plain = network_motion_again(cine, legacy)
    flipped = prov["test_time_flipped_frames"]
    assert not np.array_equal(plain.probabilities[flipped], state.probabilities[flipped])
    others = [f for f in range(cine.n_frames) if f not in flipped]
    np.testing.assert_array_equal(plain.probabilities[others], state.probabilities[others])
    every = analyze_cine(cine, tta="all", keep_network_motion=True)  # repeated by the same path, exactly
    again = network_motion_again(cine, json.loads(json.dumps(every.report["provenance"])))
    np.testing.assert_array_equal(again.probabilities, every.network_motion.probabilities)
    legacy["test_time_flips"] = "ed-es"  # a mode without its frames cannot be repeated
    with pytest.raises(ValueError, match="which frames"):
        network_motion_again(cine, legacy)
