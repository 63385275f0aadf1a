"""Tests of deepstrain.io: NIfTI / ACDC / DICOM readers, validation and writers."""
from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepstrain.cine import Cine, Geometry
from deepstrain.errors import InputError
from deepstrain.io import (
    DeepStrainWarning,
    load_cine,
    load_displacement,
    load_labels,
    save_cine,
    save_displacement,
    save_frame_labels,
    save_labels,
)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # Sunnybrook UIDs


# --------------------------------------------------------------------------- helpers
def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_geometry() -> Geometry:
    return Geometry(spacing=(8.0, 1.25, 1.4), origin=(-12.5, 40.0, 7.25), direction=rotation(0.3, -0.5, 1.1))


def write_cine_nifti(path: Path, data_tzyx: np.ndarray, geom: Geometry, dt_ms: float | None = 30.0,
                     time_unit: str = "msec") -> Path:
    img = nib.Nifti1Image(np.transpose(data_tzyx, (3, 2, 1, 0)).astype(np.float32), geom.to_nifti_affine())
    img.header.set_xyzt_units("mm", time_unit)
    z = img.header.get_zooms()
    img.header.set_zooms(z[:3] + ((dt_ms if dt_ms is not None else 1.0),))
    nib.save(img, str(path))
    return path


def random_cine(shape=(5, 4, 6, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def assert_same_geometry(a: Geometry, b: Geometry) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)


def quiet_load(*args, **kwargs) -> Cine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_cine(*args, **kwargs)


# --------------------------------------------------------------------------- synthetic NIfTI
def test_nifti_cine_oblique_anisotropic(tmp_path):
    geom = oblique_geometry()
    data = random_cine()
    f = write_cine_nifti(tmp_path / "cine.nii.gz", data, geom, dt_ms=32.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file gives no warning
        cine = load_cine(f)
    np.testing.assert_array_equal(cine.data, data)
    assert cine.data.dtype == np.float32
    assert_same_geometry(cine.geometry, geom)
    np.testing.assert_allclose(cine.times_ms, 32.5 * np.arange(5))
    assert cine.name == "cine" and cine.ed is None and cine.warnings == []
    # voxel (k, j, i) centre is where the NIfTI affine puts voxel (i, j, k)
    k, j, i = 3, 5, 6
    expected = geom.to_nifti_affine() @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(cine.geometry.index_to_world @ np.array([k, j, i, 1.0]), expected, atol=1e-4)


def test_nifti_time_in_seconds_and_toffset(tmp_path):
    geom = oblique_geometry()
    f = tmp_path / "c.nii"
    img = nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.float32), geom.to_nifti_affine())
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(img.header.get_zooms()[:3] + (0.04,))
    img.header["toffset"] = 0.01
    nib.save(img, str(f))
    np.testing.assert_allclose(load_cine(f).times_ms, 10 + 40 * np.arange(4), rtol=1e-5)


@pytest.mark.parametrize("unit,dt", [("unknown", 0.0175), ("msec", 1.0), ("sec", 2.0)])
def test_nifti_no_or_implausible_timing_warns(tmp_path, unit, dt):
    f = write_cine_nifti(tmp_path / "c.nii.gz", random_cine(), oblique_geometry(), dt_ms=dt, time_unit=unit)
    with pytest.warns(DeepStrainWarning, match="--heart-rate"):
        cine = load_cine(f)
    assert not cine.has_timing and np.all(np.isnan(cine.times_ms))
    assert any("--heart-rate" in w for w in cine.warnings)
    # an override gives timing and removes the warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cine = load_cine(f, heart_rate_bpm=75)
    np.testing.assert_allclose(cine.times_ms, np.arange(5) * 800.0 / 5)
    np.testing.assert_allclose(load_cine(f, rr_ms=1000).times_ms, np.arange(5) * 200.0)


def test_acdc_header_quirk(tmp_path):
    """qform_code 0, sform_code 2 = diag(-1, -1, 1) without voxel size; true spacing in pixdim."""
    data = random_cine((3, 5, 6, 4))
    img = nib.Nifti1Image(np.transpose(data, (3, 2, 1, 0)), np.diag([-1.0, -1.0, 1.0, 1.0]))
    hdr = img.header
    hdr.set_qform(None, code=0)
    hdr.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    hdr["pixdim"][1:5] = [1.7, 1.7, 9.0, 1.0]
    f = tmp_path / "quirk_4d.nii.gz"
    nib.save(img, str(f))
    assert nib.load(str(f)).affine[0, 0] == -1.0  # nibabel's affine has unit spacing
    cine = quiet_load(f)
    np.testing.assert_allclose(cine.geometry.spacing, [9.0, 1.7, 1.7], rtol=1e-6)
    # direction from the sform: array axes (slice, row, col) -> RAS (+S, -A, -R)
    np.testing.assert_allclose(cine.geometry.direction, [[0, 0, -1], [0, -1, 0], [1, 0, 0]], atol=1e-12)
    assert not any("spacing looks lost" in w for w in cine.warnings)


@pytest.mark.parametrize("qform_code, sform_code", [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2), (2, 4), (1, "sheared")])
def test_orientation_is_read_as_itk_and_slicer_read_it(tmp_path, qform_code, sform_code):
    """Every choice between sform and qform, and the default without either, agrees with SimpleITK
    (3D Slicer reads NIfTI through ITK): the outputs then overlay the input in Slicer."""
    sitk = pytest.importorskip("SimpleITK")
    zooms = (1.4, 1.6, 8.0)
    qform = np.diag([*zooms, 1.0])
    qform[:3, 3] = [10.0, 20.0, 30.0]
    c, s = np.cos(0.5), np.sin(0.5)
    sform = np.eye(4)
    sform[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag(zooms)
    sform[:3, 3] = [-5.0, 7.0, 40.0]
    if sform_code == "sheared":  # a scanner sform ITK cannot use: the qform is taken
        sform[0, 1] += 0.6
        sform_code = 1
    img = nib.Nifti1Image(np.transpose(random_cine((2, 5, 6, 4)), (3, 2, 1, 0)), None)
    img.header.set_zooms((*zooms, 1.0))
    img.set_qform(qform, code=max(qform_code, 1))
    img.set_sform(sform, code=max(sform_code, 1))
    img.header["qform_code"], img.header["sform_code"] = qform_code, sform_code
    f = tmp_path / "c.nii.gz"
    nib.save(img, str(f))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(f))
    reader.ReadImageInformation()
    d = np.array(reader.GetDirection()).reshape(4, 4)[:3, :3] * np.array(reader.GetSpacing()[:3])
    itk = np.eye(4)
    itk[:3, :3], itk[:3, 3] = d, np.array(reader.GetOrigin()[:3])
    itk = np.diag([-1.0, -1.0, 1.0, 1.0]) @ itk  # ITK's LPS to RAS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cine = load_cine(f)
    np.testing.assert_allclose(cine.geometry.to_nifti_affine(), itk, atol=1e-4)
    disagree = [str(w.message) for w in caught if "disagree" in str(w.message)]
    assert len(disagree) == (qform_code > 0 and sform_code > 0)
    assert all(str(f) in m for m in disagree)


def test_lost_spacing_warns_and_override(tmp_path):
    geom = Geometry(spacing=(1, 1, 1), origin=(-50, -85, 1), direction=np.diag([1.0, -1.0, -1.0]))
    f = write_cine_nifti(tmp_path / "lost.nii.gz", random_cine(), geom)
    with pytest.warns(DeepStrainWarning, match="spacing looks lost.*--spacing"):
        cine = load_cine(f)
    assert any("spacing looks lost" in w and "--spacing" in w and str(f) in w for w in cine.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cine = load_cine(f, spacing=(10, 1.5625, 1.5625))
    np.testing.assert_allclose(cine.geometry.spacing, [10, 1.5625, 1.5625])
    np.testing.assert_allclose(cine.geometry.direction, geom.direction)
    np.testing.assert_allclose(cine.geometry.origin, geom.origin)
    with pytest.raises(InputError, match="three positive numbers"):
        load_cine(f, spacing=(10, 0, 1))


def test_overrides_validation(tmp_path):
    f = write_cine_nifti(tmp_path / "c.nii.gz", random_cine(), oblique_geometry())
    with pytest.raises(InputError, match="not both"):
        load_cine(f, heart_rate_bpm=60, rr_ms=1000)
    with pytest.raises(InputError, match="not plausible"):
        load_cine(f, heart_rate_bpm=0)
    cine = load_cine(f, ed=1, es=3)
    assert (cine.ed, cine.es) == (1, 3)
    with pytest.raises(InputError, match="ES frame 7"):
        load_cine(f, es=7)


# --------------------------------------------------------------------------- round trips
def test_roundtrip_cine_labels_displacement(tmp_path):
    geom = oblique_geometry()
    data = random_cine()
    cine = Cine(data=data, geometry=geom, times_ms=18.75 + 37.5 * np.arange(5))
    out = save_cine(cine, tmp_path / "out" / "cine.nii.gz")
    back = load_cine(out)
    np.testing.assert_array_equal(back.data, data)
    assert_same_geometry(back.geometry, geom)
    np.testing.assert_allclose(back.times_ms, cine.times_ms, rtol=1e-6)
    hdr = nib.load(str(out)).header
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (1, 1)
    np.testing.assert_allclose(hdr.get_qform(), hdr.get_sform(), atol=1e-4)
    assert hdr.get_xyzt_units() == ("mm", "msec")

    labels = np.random.default_rng(1).integers(0, 4, size=data.shape).astype(np.uint8)
    save_labels(labels, geom, tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(load_labels(tmp_path / "labels.nii.gz", back), labels)
    save_labels(labels[0], geom, tmp_path / "ed.nii.gz")
    ed = nib.load(str(tmp_path / "ed.nii.gz"))
    assert ed.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(ed.dataobj).transpose(2, 1, 0), labels[0])

    disp = np.random.default_rng(2).normal(size=(5, 3) + data.shape[1:]).astype(np.float32)
    save_displacement(disp, geom, tmp_path / "disp.nii.gz")
    img = nib.load(str(tmp_path / "disp.nii.gz"))
    assert img.shape == (7, 6, 4, 5, 3) and img.header.get_intent()[0] == "vector"
    np.testing.assert_array_equal(load_displacement(tmp_path / "disp.nii.gz", back), disp)


def test_large_gzip_output_is_multi_member_deterministic_and_readable(tmp_path, monkeypatch):
    """.nii.gz files are written as several gzip members in parallel; every reader sees one file."""
    import gzip

    import SimpleITK as sitk

    from deepstrain import io as dio

    monkeypatch.setattr(dio, "GZIP_BLOCK_BYTES", 1 << 12)  # many members even for a small field
    geom = oblique_geometry()
    disp = np.random.default_rng(3).normal(size=(5, 3, 4, 6, 7)).astype(np.float32)
    a = dio.save_displacement(disp, geom, tmp_path / "a.nii.gz")
    raw = a.read_bytes()
    assert raw.count(b"\x1f\x8b\x08") >= 2  # more than one gzip member
    monkeypatch.setattr(dio.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one thread
    b = dio.save_displacement(disp, geom, tmp_path / "b.nii.gz")
    assert b.read_bytes() == raw  # the same bytes whatever the number of threads
    assert gzip.decompress(raw) == nib.load(str(a)).to_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(str(a)).dataobj), disp.transpose(4, 3, 2, 0, 1))
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(a)))  # ITK (Slicer's reader) reads every member
    np.testing.assert_array_equal(itk, disp.transpose(0, 2, 3, 4, 1))  # (T, Z, Y, X, components)


def test_outputs_are_written_as_nibabel_would_serialise_them(tmp_path, monkeypatch):
    """The writer streams header and data in blocks (no whole-file copy in memory); the bytes are
    nibabel's own serialisation of the same image, compressed or not, for 3D to 5D data, also when
    the data has to be reordered from pieces smaller than a block."""
    import gzip

    from deepstrain import io as dio

    monkeypatch.setattr(dio, "GZIP_BLOCK_BYTES", 1 << 10)
    geom = oblique_geometry()
    rng = np.random.default_rng(4)
    disp = rng.normal(size=(3, 3, 4, 6, 7)).astype(np.float32)
    labels = (rng.random((3, 4, 6, 7)) * 4).astype(np.uint8)
    for name, save, data, expected in (
        ("d", dio.save_displacement, disp, disp.transpose(4, 3, 2, 0, 1)),
        ("l", dio.save_labels, labels, labels.transpose(3, 2, 1, 0)),
        ("l3", dio.save_labels, labels[0], labels[0].transpose(2, 1, 0)),
    ):
        for suffix in (".nii.gz", ".nii"):
            out = save(data, geom, tmp_path / f"{name}{suffix}")
            raw = out.read_bytes()
            img = nib.load(str(out))
            np.testing.assert_array_equal(np.asarray(img.dataobj), expected)
            assert (gzip.decompress(raw) if suffix == ".nii.gz" else raw) == img.to_bytes()


def test_save_cine_without_timing(tmp_path):
    cine = Cine(data=random_cine(), geometry=oblique_geometry(), times_ms=np.full(5, np.nan))
    out = save_cine(cine, tmp_path / "c.nii.gz")
    assert nib.load(str(out)).header.get_zooms()[3] == 0
    back = quiet_load(out)
    assert not back.has_timing


def test_written_nifti_gets_the_umask_permissions(tmp_path):
    cine = Cine(data=random_cine(), geometry=oblique_geometry(), times_ms=np.arange(5) * 30.0)
    old = os.umask(0o022)
    try:
        out = save_cine(cine, tmp_path / "c.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not the 0600 of the temporary file


def test_writers_refuse_to_overwrite(tmp_path):
    cine = Cine(data=random_cine(), geometry=oblique_geometry(), times_ms=np.arange(5) * 30.0)
    target = tmp_path / "c.nii.gz"
    target.write_bytes(b"user data")
    with pytest.raises(InputError, match="will not overwrite"):
        save_cine(cine, target)
    assert target.read_bytes() == b"user data"
    save_cine(cine, target, overwrite=True)
    np.testing.assert_array_equal(load_cine(target).data, cine.data)
    assert [p.name for p in tmp_path.iterdir()] == ["c.nii.gz"]  # no partial files left
    with pytest.raises(InputError, match=".nii"):
        save_labels(np.zeros((2, 2, 2)), cine.geometry, tmp_path / "x.png")


# --------------------------------------------------------------------------- bad inputs
@pytest.fixture()
def good_cine_file(tmp_path) -> Path:
    return write_cine_nifti(tmp_path / "good.nii.gz", random_cine(), oblique_geometry())


def test_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        load_cine(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(e.value)
    with pytest.raises(InputError, match="no DICOM images") as e:
        load_cine(tmp_path)  # empty folder
    assert str(tmp_path) in str(e.value)


def test_truncated_nifti(tmp_path, good_cine_file):
    data = good_cine_file.read_bytes()
    for n in (len(data) // 2, 100):
        bad = tmp_path / f"truncated{n}.nii.gz"
        bad.write_bytes(data[:n])
        before = digest(bad)
        with pytest.raises(InputError, match="cannot be read") as e:
            load_cine(bad)
        assert bad.name in str(e.value) and e.value.path == str(bad)
        assert digest(bad) == before


@pytest.mark.parametrize("shape,match", [((6, 7), "not a cine"), ((6, 7, 4), "single 3D frame"),
                                         ((6, 7, 4, 1), "single 3D frame")])
def test_not_a_cine(tmp_path, shape, match):
    f = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(f))
    before = digest(f)
    with pytest.raises(InputError, match=match) as e:
        load_cine(f)
    assert "img.nii.gz" in str(e.value)
    assert digest(f) == before


def test_nan_in_image(tmp_path):
    data = random_cine()
    data[2, 1, 3, 4] = np.nan
    data[0, 0, 0, 0] = np.inf
    f = write_cine_nifti(tmp_path / "nan.nii.gz", data, oblique_geometry())
    with pytest.raises(InputError, match="2 NaN or infinite") as e:
        load_cine(f)
    assert "nan.nii.gz" in str(e.value)


def test_bad_labels(tmp_path, good_cine_file):
    cine = load_cine(good_cine_file)
    geom = cine.geometry
    labels = np.zeros(cine.data.shape, np.uint8)
    # grid: other shape, shifted origin, other spacing
    save_labels(labels[:, :, :-1], geom, tmp_path / "shape.nii.gz")
    shifted = Geometry(geom.spacing, geom.origin + [3, 0, 0], geom.direction)
    save_labels(labels, shifted, tmp_path / "origin.nii.gz")
    wider = Geometry(geom.spacing * [1, 1.1, 1], geom.origin, geom.direction)
    save_labels(labels, wider, tmp_path / "spacing.nii.gz")
    for name in ("shape", "origin", "spacing"):
        f = tmp_path / f"{name}.nii.gz"
        before = digest(f)
        with pytest.raises(InputError, match="labels grid does not match the cine") as e:
            load_labels(f, cine)
        assert f.name in str(e.value)
        assert digest(f) == before
    # 3D label map
    save_labels(labels[0], geom, tmp_path / "ed.nii.gz")
    with pytest.raises(InputError, match="single 3D label map"):
        load_labels(tmp_path / "ed.nii.gz", cine)
    # wrong values
    bad = labels.copy()
    bad[1, 1, 1, 1] = 7
    save_labels(bad, geom, tmp_path / "values.nii.gz")
    with pytest.raises(InputError, match=r"unexpected label values \[7\]") as e:
        load_labels(tmp_path / "values.nii.gz", cine)
    assert "values.nii.gz" in str(e.value)
    # NaN in a float label file
    fl = np.transpose(labels, (3, 2, 1, 0)).astype(np.float32)
    fl[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(fl, geom.to_nifti_affine()), str(tmp_path / "nanlab.nii.gz"))
    with pytest.raises(InputError, match="NaN"):
        load_labels(tmp_path / "nanlab.nii.gz", cine)


def test_bad_displacement(tmp_path, good_cine_file):
    cine = load_cine(good_cine_file)
    disp = np.zeros((cine.n_frames, 3) + cine.shape3d, np.float32)
    save_displacement(disp[:-1], cine.geometry, tmp_path / "short.nii.gz")
    with pytest.raises(InputError, match="displacement grid does not match"):
        load_displacement(tmp_path / "short.nii.gz", cine)
    disp[1, 2, 0, 0, 0] = np.inf
    save_displacement(disp, cine.geometry, tmp_path / "inf.nii.gz")
    with pytest.raises(InputError, match="NaN or infinite") as e:
        load_displacement(tmp_path / "inf.nii.gz", cine)
    assert "inf.nii.gz" in str(e.value)


# --------------------------------------------------------------------------- real data: ACDC
def test_acdc_patient001_folder(shared_data, tmp_path):
    folder = shared_data / "acdc" / "training" / "patient001"
    with pytest.warns(DeepStrainWarning, match="no frame timing"):
        cine = load_cine(folder)
    assert cine.data.shape == (2, 10, 256, 216)
    assert cine.frame_numbers.tolist() == [0, 11]
    assert (cine.ed, cine.es) == (0, 1) and cine.group == "DCM"
    assert [Path(f).name for f in cine.frame_files] == ["patient001_frame01.nii.gz", "patient001_frame12.nii.gz"]
    ref = nib.load(str(folder / "patient001_frame01.nii.gz"))
    np.testing.assert_allclose(cine.geometry.spacing, np.asarray(ref.header.get_zooms())[[2, 1, 0]])
    np.testing.assert_allclose(cine.geometry.spacing, [10, 1.5625, 1.5625])
    np.testing.assert_array_equal(cine.data[1], np.asarray(nib.load(cine.frame_files[1]).dataobj).T)
    assert sorted(cine.labels) == [0, 1]
    gt = np.asarray(nib.load(str(folder / "patient001_frame12_gt.nii.gz")).dataobj).T
    np.testing.assert_array_equal(cine.labels[1], gt)
    assert cine.labels[1].dtype == np.uint8 and set(np.unique(gt)) == {0, 1, 2, 3}
    # timing override uses NbFrame (30) and the cycle frame numbers
    np.testing.assert_allclose(quiet_load(folder, heart_rate_bpm=60).times_ms, [0, 11 * 1000 / 30])
    # ed/es overrides are cycle frame numbers
    assert quiet_load(folder, ed=11, es=0).ed == 1
    with pytest.raises(InputError, match="not among the frames"):
        quiet_load(folder, es=5)

    # body size from Info.cfg (Height: 184.0, Weight: 95.0), replaced by the overrides
    assert (cine.subject.height_cm, cine.subject.weight_kg, cine.subject.heart_rate_bpm) == (184.0, 95.0, None)
    assert cine.subject.sources["height_cm"].endswith("Info.cfg Height (cm)")
    over = quiet_load(folder, height_cm=170, weight_kg=70.5, heart_rate_bpm=60)
    assert (over.subject.height_cm, over.subject.weight_kg, over.subject.heart_rate_bpm) == (170.0, 70.5, 60.0)
    assert over.subject.sources == {"height_cm": "--height", "weight_kg": "--weight", "heart_rate_bpm": "--heart-rate"}
    assert quiet_load(folder, rr_ms=800).subject.heart_rate_bpm == pytest.approx(75.0)
    with pytest.raises(InputError, match="height 1.84 cm is not plausible") as e:
        quiet_load(folder, height_cm=1.84)  # metres given for cm
    assert "patient001" in str(e.value)
    with pytest.raises(InputError, match="weight"):
        quiet_load(folder, weight_kg=0)

    # a label map written on the frame's header reads exactly like the input frame
    out = save_frame_labels(cine.labels[0], cine.frame_files[0], tmp_path / "patient001_frame01_seg.nii.gz")
    a, b = nib.load(cine.frame_files[0]), nib.load(str(out))
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.header["pixdim"][:4], b.header["pixdim"][:4])
    assert (int(b.header["sform_code"]), int(b.header["qform_code"])) == (2, 0)
    assert b.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(b.dataobj).T, cine.labels[0])
    with pytest.raises(InputError, match="overwrite the input"):
        save_frame_labels(cine.labels[0], cine.frame_files[0], cine.frame_files[0], overwrite=True)


def test_acdc_outputs_overlay_input_in_itk(shared_data, tmp_path):
    """Slicer reads NIfTI through ITK: the written file must sit where ITK puts the input."""
    sitk = pytest.importorskip("SimpleITK")
    folder = shared_data / "acdc" / "training" / "patient001"
    cine = quiet_load(folder)
    out = save_labels(cine.labels[0], cine.geometry, tmp_path / "ed_labels.nii.gz")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    a = sitk.ReadImage(cine.frame_files[0])
    b = sitk.ReadImage(str(out))
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_acdc_patient090_4d(shared_data):
    folder = shared_data / "acdc" / "training" / "patient090"
    cine = quiet_load(folder)
    assert cine.data.shape == (12, 7, 224, 154)
    assert (cine.ed, cine.es) == (3, 10) and cine.group == "RV" and cine.frame_files is None
    assert sorted(cine.labels) == [3, 10]
    frame = np.asarray(nib.load(str(folder / "patient090_frame04.nii.gz")).dataobj).T
    np.testing.assert_array_equal(cine.data[3], frame)
    gt = np.asarray(nib.load(str(folder / "patient090_frame11_gt.nii.gz")).dataobj).T
    np.testing.assert_array_equal(cine.labels[10], gt)
    np.testing.assert_allclose(cine.geometry.spacing, [10, 1.78571, 1.78571], rtol=1e-5)
    np.testing.assert_allclose(quiet_load(folder, rr_ms=900).times_ms, np.arange(12) * 75.0)


def test_acdc_crop_lost_spacing(shared_data):
    import json

    crop = shared_data / "acdc_cine_crop"
    info = json.loads((crop / "crops.json").read_text())
    f = crop / "patient051" / "patient051_4d.nii.gz"
    before = digest(f)
    with pytest.warns(DeepStrainWarning) as record:
        cine = load_cine(f)
    assert any("spacing looks lost" in str(w.message) and "--spacing" in str(w.message) for w in record)
    np.testing.assert_array_equal(cine.geometry.spacing, [1, 1, 1])
    true = info["patient051"]["true_spacing_mm"]  # (x, y, z)
    cine = quiet_load(f, spacing=true[::-1])
    assert not any("spacing" in w for w in cine.warnings)
    np.testing.assert_allclose(cine.geometry.spacing, true[::-1])
    assert cine.data.shape == (30, 7, 95, 100)
    assert digest(f) == before

    ok = quiet_load(crop / "patient001" / "patient001_4d.nii.gz")
    assert not any("spacing" in w for w in ok.warnings)
    np.testing.assert_allclose(ok.geometry.spacing, info["patient001"]["true_spacing_mm"][::-1], rtol=1e-4)


# --------------------------------------------------------------------------- real data: DICOM, UKBB
def test_sunnybrook_dicom(shared_data):
    import pydicom

    folder = shared_data / "sunnybrook" / "SCD0000101"
    cine = quiet_load(folder)
    assert cine.data.shape == (20, 12, 256, 256)
    np.testing.assert_allclose(cine.geometry.spacing, [10, 1.367188, 1.367188], rtol=1e-4)
    t = cine.times_ms
    assert np.all(np.diff(t) > 0) and 0 <= t[0] < 40 and 700 < t[-1] < 760

    def read(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(str(folder / f"{n}.dcm"), force=True)

    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    # N.dcm is file slice (N-1)//20 (base to apex), phase (N-1)%20; slices here ascend along the normal
    for n in (1, 27, 133, 240):
        ds = read(n)
        z_file, t_idx = (n - 1) // 20, (n - 1) % 20
        matches = [z for z in range(12) if np.allclose(
            cine.geometry.origin + cine.geometry.direction[:, 0] * cine.geometry.spacing[0] * z,
            lps_to_ras * np.asarray(ds.ImagePositionPatient, float), atol=0.05)]
        assert len(matches) == 1
        z = matches[0]
        assert z == 11 - z_file
        np.testing.assert_array_equal(cine.data[t_idx, z], ds.pixel_array.astype(np.float32))
        # world position of pixel (row r, column c) from the DICOM tags
        iop = np.asarray(ds.ImageOrientationPatient, float)
        ps = np.asarray(ds.PixelSpacing, float)
        for r, c in ((0, 0), (255, 0), (0, 255), (200, 37)):
            lps = np.asarray(ds.ImagePositionPatient, float) + c * ps[1] * iop[:3] + r * ps[0] * iop[3:]
            world = cine.geometry.index_to_world @ np.array([z, r, c, 1.0])
            np.testing.assert_allclose(world[:3], lps_to_ras * lps, atol=0.02)
    first = read(221)  # first slice after ordering
    np.testing.assert_allclose(cine.geometry.origin, lps_to_ras * np.asarray(first.ImagePositionPatient, float),
                               atol=1e-4)
    # slice axis = row_dir x col_dir (in RAS), so the NIfTI affine is right-handed
    iop = np.asarray(first.ImageOrientationPatient, float)
    np.testing.assert_allclose(cine.geometry.direction[:, 0], lps_to_ras * np.cross(iop[:3], iop[3:]), atol=1e-4)
    assert np.linalg.det(cine.geometry.to_nifti_affine()[:3, :3]) > 0


def _copy_dicoms(src: Path, dst: Path, names) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst / f"{n}.dcm").write_bytes((src / f"{n}.dcm").read_bytes())


def _edited_copies(src: Path, names, dst: Path, edit, prefix: str = "") -> None:
    """Copies of DICOM files ``names`` with ``edit(dataset, name)`` applied (pydicom's warnings off)."""
    import pydicom

    dst.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            ds = pydicom.dcmread(str(src / f"{n}.dcm"), force=True)
            edit(ds, n)
            ds.save_as(str(dst / f"{prefix}{n}.dcm"))


def _acdc_patient001_images(shared_data, tmp_path, pattern: str = "patient001_frame*.nii.gz"):
    """A copy of ACDC patient001's files matching ``pattern`` (no Info.cfg): (source folder, copy)."""
    src = shared_data / "acdc" / "training" / "patient001"
    folder = tmp_path / "patient001"
    folder.mkdir()
    for f in src.glob(pattern):
        (folder / f.name).write_bytes(f.read_bytes())
    return src, folder


def test_acdc_implausible_body_size_is_ignored_with_a_warning(shared_data, tmp_path):
    src, folder = _acdc_patient001_images(shared_data, tmp_path, "patient001_frame[01][12].nii.gz")
    (folder / "patient001_frame01_gt.nii.gz").write_bytes((src / "patient001_frame01_gt.nii.gz").read_bytes())
    (folder / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 1.84\nNbFrame: 30\nWeight: heavy\n")
    with pytest.warns(DeepStrainWarning) as record:
        cine = load_cine(folder)
    messages = [str(w.message) for w in record]
    assert any("Height (cm): height 1.84 cm is not plausible" in m and "--height" in m and "Info.cfg" in m
               for m in messages)
    assert any("Weight is not a number" in m for m in messages)
    assert cine.subject.height_cm is None and cine.subject.weight_kg is None and cine.subject.sources == {}
    assert any("not plausible" in w for w in cine.warnings)


def test_dicom_subject_tags(shared_data, tmp_path):
    """Sunnybrook has HeartRate (about 80) and no PatientSize/Weight; edited copies carry them."""
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(2) for t in range(3)]
    _copy_dicoms(src, tmp_path / "plain", names)
    plain = quiet_load(tmp_path / "plain")
    assert plain.subject.height_cm is None and plain.subject.weight_kg is None
    assert 75 <= plain.subject.heart_rate_bpm <= 85 and plain.subject.sources["heart_rate_bpm"].endswith("HeartRate")

    def body(ds, n):
        ds.PatientSize, ds.PatientWeight = "1.75", "68"
        del ds.HeartRate  # the RR interval (NominalInterval, ms) then gives the heart rate
        ds.NominalInterval = "800"

    _edited_copies(src, names, tmp_path / "body", body)
    cine = quiet_load(tmp_path / "body")
    assert cine.subject.height_cm == pytest.approx(175.0) and cine.subject.weight_kg == pytest.approx(68.0)
    assert cine.subject.heart_rate_bpm == pytest.approx(75.0)
    assert "NominalInterval" in cine.subject.sources["heart_rate_bpm"]

    def in_cm(ds, n):
        ds.PatientSize = "175"  # entered in cm where DICOM wants m

    _edited_copies(src, names, tmp_path / "cm", in_cm)
    with pytest.warns(DeepStrainWarning, match=r"PatientSize \(m\): height 17500 cm is not plausible.*--height"):
        cine = load_cine(tmp_path / "cm")
    assert cine.subject.height_cm is None
    assert quiet_load(tmp_path / "cm", height_cm=175).subject.height_cm == 175.0


def test_dicom_inconsistent_series(shared_data, tmp_path):
    src = shared_data / "sunnybrook" / "SCD0000101"
    # 3 slices x 4 phases, but one image missing in one slice
    names = [z * 20 + t + 1 for z in range(3) for t in range(4)]
    _copy_dicoms(src, tmp_path / "ok", names)
    cine = quiet_load(tmp_path / "ok")
    assert cine.data.shape == (4, 3, 256, 256)
    _copy_dicoms(src, tmp_path / "missing", names[:-1])
    with pytest.raises(InputError, match="different numbers of frames") as e:
        quiet_load(tmp_path / "missing")
    assert "missing" in str(e.value)
    # a missing middle slice: gaps 10, 20 mm
    _copy_dicoms(src, tmp_path / "gap", [z * 20 + t + 1 for z in (0, 1, 3) for t in range(2)])
    with pytest.raises(InputError, match="not evenly spaced"):
        quiet_load(tmp_path / "gap")
    # one phase only
    _copy_dicoms(src, tmp_path / "single", [z * 20 + 1 for z in range(3)])
    with pytest.raises(InputError, match="only one frame"):
        quiet_load(tmp_path / "single")
    with pytest.raises(InputError, match="single DICOM image; give the folder"):
        quiet_load(tmp_path / "single" / "1.dcm")
    # a folder of non-DICOM files
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM images"):
        quiet_load(tmp_path / "junk")


def test_dicom_tags_series_choice_rescale(shared_data, tmp_path):
    """Edited copies of Sunnybrook images: non-square pixels, rescaling, a second series."""
    import pydicom

    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(2) for t in range(3)]
    main = tmp_path / "study"
    main.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            ds = pydicom.dcmread(str(src / f"{n}.dcm"), force=True)
            ds.PixelSpacing = [1.2, 1.5]
            ds.RescaleSlope, ds.RescaleIntercept = 2, -5
            ds.save_as(str(main / f"{n}.dcm"))
        for n in names[:4]:  # a smaller second series (e.g. a localizer) beside it
            ds = pydicom.dcmread(str(src / f"{n}.dcm"), force=True)
            ds.SeriesInstanceUID = "1.2.3.4"
            ds.save_as(str(main / f"other{n}.dcm"))
    with pytest.warns(DeepStrainWarning, match="several DICOM series") as record:
        cine = load_cine(main)
    assert any("1.2.3.4 (4 images" in str(w.message) for w in record)
    assert cine.data.shape == (3, 2, 256, 256)
    np.testing.assert_allclose(cine.geometry.spacing, [10, 1.2, 1.5], rtol=1e-5)
    ds = pydicom.dcmread(str(main / "22.dcm"), force=True)  # file slice 1 -> index 0 (ascending normal)
    np.testing.assert_array_equal(cine.data[1, 0], ds.pixel_array * 2.0 - 5)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    r, c = 100, 30
    lps = np.asarray(ds.ImagePositionPatient, float) + c * 1.5 * iop[:3] + r * 1.2 * iop[3:]
    world = cine.geometry.index_to_world @ np.array([0, r, c, 1.0])
    np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=0.02)
    # the second series as large as the first (6 images): ambiguous
    for n in names[4:]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(src / f"{n}.dcm"), force=True)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.save_as(str(main / f"other{n}.dcm"))
    with pytest.raises(InputError, match="ambiguous"):
        load_cine(main)


def test_dicom_one_series_per_slice_is_assembled(shared_data, tmp_path):
    """A cine stored as one series per slice loads as the same stack as one series; a long-axis
    single-slice series beside it is ignored with a warning; two series at one position are refused."""
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(3) for t in range(4)]
    _copy_dicoms(src, tmp_path / "one", names)
    reference = quiet_load(tmp_path / "one")
    split = tmp_path / "split"

    def per_slice(ds, n):
        ds.SeriesInstanceUID = f"1.2.826.0.1.{(n - 1) // 20}"  # one series per slice

    _edited_copies(src, names, split, per_slice)
    with pytest.warns(DeepStrainWarning, match="3 single-slice series assembled into one stack"):
        cine = load_cine(split)
    np.testing.assert_array_equal(cine.data, reference.data)
    np.testing.assert_allclose(cine.geometry.to_nifti_affine(), reference.geometry.to_nifti_affine(), atol=1e-6)
    np.testing.assert_allclose(cine.times_ms, reference.times_ms)

    def long_axis(ds, n):  # a single-slice series in another orientation (a long-axis view)
        ds.SeriesInstanceUID = "1.2.826.0.9"
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]

    _edited_copies(src, (61, 62, 63), split, long_axis, prefix="lax")
    with pytest.warns(DeepStrainWarning) as record:
        cine = load_cine(split)
    messages = [str(w.message) for w in record]
    assert any("ignoring 1.2.826.0.9 (3 images" in m for m in messages)
    assert any("3 single-slice series assembled into one stack" in m for m in messages)
    np.testing.assert_array_equal(cine.data, reference.data)

    def again(ds, n):  # a repeated acquisition of slice 0 as a series of its own: ambiguous
        ds.SeriesInstanceUID = "1.2.826.0.7"

    _edited_copies(src, names[:4], split, again, prefix="again")
    with pytest.raises(InputError, match="same slice position"):
        quiet_load(split)


def _enhanced_copy(src: Path, names, out: Path, *, shuffle: bool = False) -> None:
    """Sunnybrook images ``names`` re-stored as ONE enhanced (multi-frame) MR file: per-frame
    position, trigger time and rescaling in functional groups, orientation and spacing shared."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = [pydicom.dcmread(str(src / f"{n}.dcm"), force=True) for n in names]
    if shuffle:
        frames = frames[::-1]
    f0 = frames[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["deepstrain-test"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = "1.2.826.0.5"
    ds.Modality = "MR"
    for key in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                "SamplesPerPixel", "PhotometricInterpretation"):
        setattr(ds, key, f0.get(key))
    ds.NumberOfFrames = len(frames)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = f0.PixelSpacing
    pm.SliceThickness = f0.SliceThickness
    ori = Dataset()
    ori.ImageOrientationPatient = f0.ImageOrientationPatient
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([ori])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k, fr in enumerate(frames):
        g = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = fr.ImagePositionPatient
        card = Dataset()
        card.NominalCardiacTriggerDelayTime = fr.TriggerTime
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept = 2, -5 - k  # a different rescaling per frame
        g.PlanePositionSequence = Sequence([pos])
        g.CardiacSynchronizationSequence = Sequence([card])
        g.PixelValueTransformationSequence = Sequence([pvt])
        per.append(g)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = b"".join(fr.pixel_array.astype(fr.pixel_array.dtype).tobytes() for fr in frames)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(out), enforce_file_format=True)


def test_dicom_enhanced_multiframe(shared_data, tmp_path):
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(3) for t in range(4)]
    _copy_dicoms(src, tmp_path / "one", names)
    reference = quiet_load(tmp_path / "one")
    _enhanced_copy(src, names, tmp_path / "enh" / "cine.dcm", shuffle=True)
    for path in (tmp_path / "enh", tmp_path / "enh" / "cine.dcm"):  # the folder, or the file itself
        cine = quiet_load(path)
        assert cine.data.shape == reference.data.shape == (4, 3, 256, 256)
        np.testing.assert_allclose(cine.geometry.to_nifti_affine(), reference.geometry.to_nifti_affine(), atol=1e-6)
        np.testing.assert_allclose(cine.times_ms, reference.times_ms)
        # stored frame k (files reversed) has rescale 2x - 5 - k; array slice z is file slice 2 - z
        # (slices ascend along the normal)
        for t in range(4):
            for z in range(3):
                k = len(names) - 1 - names.index((2 - z) * 20 + t + 1)
                np.testing.assert_array_equal(cine.data[t, z], reference.data[t, z] * 2 - 5 - k)
    # a multi-frame file without functional groups is refused by name
    import pydicom

    ds = pydicom.dcmread(str(tmp_path / "enh" / "cine.dcm"))
    del ds.PerFrameFunctionalGroupsSequence
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    (tmp_path / "bad").mkdir()
    ds.save_as(str(tmp_path / "bad" / "multi.dcm"))
    for given in (tmp_path / "bad", tmp_path / "bad" / "multi.dcm"):  # the folder or the file itself
        with pytest.raises(InputError, match="multi-frame DICOM without a plane position per frame") as e:
            quiet_load(given)
        assert "multi.dcm" in str(e.value)
    from pydicom.sequence import Sequence

    ds.PerFrameFunctionalGroupsSequence = Sequence([])  # empty, as some scanners write it
    ds.save_as(str(tmp_path / "bad" / "multi.dcm"))
    with pytest.raises(InputError, match="multi-frame DICOM without a plane position per frame"):
        quiet_load(tmp_path / "bad")


def test_ukbb_single_frame_is_not_a_cine(shared_data):
    f = shared_data / "ukbb_demo" / "1" / "sa_ED.nii.gz"
    with pytest.raises(InputError, match="single 3D frame") as e:
        load_cine(f)
    assert "sa_ED.nii.gz" in str(e.value)


# --------------------------------------------------------------------------- UK Biobank subject folders
def _write_frame(path: Path, frame_zyx: np.ndarray, geom: Geometry, dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.transpose(frame_zyx, (2, 1, 0)).astype(dtype), geom.to_nifti_affine()), str(path))
    return path


def test_ukbb_folder_of_ed_and_es_frames(tmp_path):
    """sa_ED + sa_ES: a two-frame study (ED 0, ES 1) with frame files, UK Biobank labels in ACDC values."""
    geom, data = oblique_geometry(), random_cine((2, 4, 6, 7))
    folder = tmp_path / "1000001"
    folder.mkdir()
    for i, phase in enumerate(("ED", "ES")):
        _write_frame(folder / f"sa_{phase}.nii.gz", data[i], geom)
        ukbb = np.zeros((4, 6, 7), np.uint8)
        ukbb[1, 2:4, 2:4], ukbb[1, 1, 1:5], ukbb[2, 4, :] = 1, 2, 3  # LV cavity, myocardium, RV
        _write_frame(folder / f"seg_sa_{phase}.nii.gz", ukbb, geom, np.uint8)
    _write_frame(folder / "la_4ch.nii.gz", data[0, :1], geom)  # long-axis files are not used
    with pytest.warns(DeepStrainWarning, match="no frame timing"):
        cine = load_cine(folder)
    assert cine.n_frames == 2 and (cine.ed, cine.es) == (0, 1) and cine.name == "1000001"
    np.testing.assert_allclose(cine.data, data, rtol=1e-6)
    assert_same_geometry(cine.geometry, geom)
    assert [Path(f).name for f in cine.frame_files] == ["sa_ED.nii.gz", "sa_ES.nii.gz"]
    lab = cine.labels[1]
    assert (lab[1, 2:4, 2:4] == 3).all() and (lab[1, 1, 1:5] == 2).all() and (lab[2, 4, :] == 1).all()
    with pytest.raises(InputError, match="where ES falls in the cycle is unknown"):
        quiet_load(folder, heart_rate_bpm=60)
    # an ES frame on another grid is refused, naming the file
    _write_frame(folder / "sa_ES.nii.gz", data[1], Geometry(geom.spacing, geom.origin + 3.0, geom.direction))
    with pytest.raises(InputError, match="sa_ES.nii.gz"):
        quiet_load(folder)


def test_ukbb_folder_with_the_whole_cycle(tmp_path):
    geom, data = oblique_geometry(), random_cine((5, 4, 6, 7))
    folder = tmp_path / "1000002"
    folder.mkdir()
    write_cine_nifti(folder / "sa.nii.gz", data, geom, dt_ms=20.0)
    _write_frame(folder / "sa_ED.nii.gz", data[0], geom)
    _write_frame(folder / "sa_ES.nii.gz", data[2], geom)
    cine = load_cine(folder)
    assert cine.n_frames == 5 and cine.frame_files is None and cine.ed is None
    np.testing.assert_allclose(cine.times_ms, np.arange(5) * 20.0)
    # one of the two frames alone is not a UK Biobank folder: the message names the layouts
    (folder / "sa.nii.gz").unlink()
    (folder / "sa_ES.nii.gz").unlink()
    with pytest.raises(InputError, match="UK Biobank"):
        quiet_load(folder)


def test_ukbb_demo_subject_folder(shared_data):
    """The real demo subject: its folder loads as a two-frame study with UK Biobank's labels."""
    folder = shared_data / "ukbb_demo" / "1"
    cine = quiet_load(folder)
    assert cine.n_frames == 2 and (cine.ed, cine.es) == (0, 1)
    ref = np.asarray(nib.load(str(folder / "seg_sa_ED.nii.gz")).dataobj).transpose(2, 1, 0)
    assert sorted(cine.labels) == [0, 1]
    assert ((cine.labels[0] == 3) == (ref == 1)).all() and ((cine.labels[0] == 1) == (ref == 3)).all()


def test_dicom_trigger_times_are_checked(shared_data, tmp_path):
    """TriggerTime in seconds (frame interval 0.04 ms) gives no timing and a warning, not rates 1000x
    too large; a slice that covers another part of the cycle is named; the true cine is silent."""
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(4) for t in range(20)]
    _copy_dicoms(src, tmp_path / "true", names)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeepStrainWarning)  # the real cine (intervals 37-41 ms per slice): no warning
        cine = load_cine(tmp_path / "true")
    assert 30 < np.median(np.diff(cine.times_ms)) < 45

    def seconds(ds, n):
        ds.TriggerTime = float(ds.TriggerTime) / 1000.0

    _edited_copies(src, names, tmp_path / "seconds", seconds)
    with pytest.warns(DeepStrainWarning, match="TriggerTime in seconds"):
        cine = load_cine(tmp_path / "seconds")
    assert not cine.has_timing

    def halved_on_one_slice(ds, n):
        if (n - 1) // 20 == 2:
            ds.TriggerTime = float(ds.TriggerTime) / 2.0

    _edited_copies(src, names, tmp_path / "mixed", halved_on_one_slice)
    with pytest.warns(DeepStrainWarning, match=r"frame interval of slice \d+ at .* another part of the cycle"):
        load_cine(tmp_path / "mixed")


def test_dicom_image_without_columns_is_a_clear_error(shared_data, tmp_path):
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(2) for t in range(3)]

    def no_columns(ds, n):
        if n == 22:
            del ds.Columns

    _edited_copies(src, names, tmp_path / "nc", no_columns)
    with pytest.raises(InputError, match=r"22\.dcm: DICOM image without Columns"):
        quiet_load(tmp_path / "nc")


def test_affine_voxel_size_other_than_pixdim_is_warned(tmp_path):
    """pixdim decides the spacing (ACDC's sform carries none); an affine that carries another voxel
    size is named in a warning, and one that agrees is silent."""
    geom = oblique_geometry()
    path = write_cine_nifti(tmp_path / "c.nii.gz", random_cine(), geom)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeepStrainWarning)
        load_cine(path)  # affine and pixdim agree
    img = nib.load(str(path))
    img.header.set_zooms((1.5, 1.5, 8.0, 30.0))  # pixdim says 1.5 x 1.5, the affine 1.4 x 1.25
    img.to_filename(str(tmp_path / "m.nii.gz"))
    with pytest.warns(DeepStrainWarning, match=r"affine's voxel size 1\.4 x 1\.25 x 8 mm .* differs from pixdim's"):
        cine = load_cine(tmp_path / "m.nii.gz")
    np.testing.assert_allclose(cine.geometry.spacing, [8.0, 1.5, 1.5])


def test_acdc_info_cfg_saved_with_a_byte_order_mark_and_crlf(shared_data, tmp_path):
    src, folder = _acdc_patient001_images(shared_data, tmp_path)
    text = (src / "Info.cfg").read_text().replace("\n", "\r\n")
    (folder / "Info.cfg").write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Windows Notepad saves it
    cine = quiet_load(folder)
    assert (cine.ed, cine.es) == (0, 1) and cine.subject.height_cm == 184.0


def test_dicom_series_in_a_linked_sub_folder_and_files_named_by_their_path(shared_data, tmp_path):
    src = shared_data / "sunnybrook" / "SCD0000101"
    study = tmp_path / "study"
    study.mkdir()
    (study / "series").symlink_to(src, target_is_directory=True)
    (study / "loop").symlink_to(study, target_is_directory=True)  # a link loop ends
    assert quiet_load(study).data.shape == (20, 12, 256, 256)
    (study / "copy").mkdir()
    (study / "copy" / "221.dcm").write_bytes((src / "221.dcm").read_bytes())
    with pytest.raises(InputError, match=r"same TriggerTime .*\(copy/221.dcm, series/221.dcm\)"):
        quiet_load(study)


def test_a_stack_whose_slices_lie_along_another_axis_is_named(tmp_path):
    """Thin 'slices' (1.5 mm) with 8 mm 'pixels': the short-axis slices are not on the third axis."""
    geom = Geometry(spacing=(1.5, 8.0, 1.5), origin=(0, 0, 0), direction=np.eye(3))
    f = write_cine_nifti(tmp_path / "permuted.nii.gz", random_cine(), geom)
    with pytest.warns(DeepStrainWarning, match="closer than the pixels are wide"):
        load_cine(f)
    ok = write_cine_nifti(tmp_path / "sa.nii.gz", random_cine(), Geometry(spacing=(8.0, 1.5, 1.5), origin=(0, 0, 0),
                                                                          direction=np.eye(3)))
    assert not any("closer than the pixels" in w for w in quiet_load(ok).warnings)


# --------------------------------------------------------------------------- input defects named clearly
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_acdc_info_cfg_non_finite_frame_is_a_clear_error(shared_data, tmp_path, value):
    _, folder = _acdc_patient001_images(shared_data, tmp_path)
    (folder / "Info.cfg").write_text(f"ED: {value}\nES: 12\nNbFrame: 30\n")
    with pytest.raises(InputError, match=r"ED must be a positive whole number \(1-based\), got '") as e:
        quiet_load(folder)
    assert e.value.path.endswith("Info.cfg") and value in str(e.value)


def test_acdc_nbframe_smaller_than_a_frame_is_refused(shared_data, tmp_path):
    _, folder = _acdc_patient001_images(shared_data, tmp_path, "patient001_frame[01][12].nii.gz")
    (folder / "Info.cfg").write_text("ED: 1\nES: 12\nNbFrame: 5\n")
    with pytest.raises(InputError, match="ES frame 12 is beyond NbFrame 5") as e:
        quiet_load(folder, heart_rate_bpm=60)
    assert e.value.path.endswith("Info.cfg")
    # ED and ES within NbFrame, but another frame file past it
    (folder / "Info.cfg").write_text("ED: 1\nES: 11\nNbFrame: 11\n")
    (folder / "patient001_frame11.nii.gz").write_bytes((folder / "patient001_frame12.nii.gz").read_bytes())
    with pytest.raises(InputError, match=r"NbFrame is 11 but the folder holds frame\(s\) beyond it: "
                                         r"patient001_frame12\.nii\.gz") as e:
        quiet_load(folder)
    assert e.value.path.endswith("Info.cfg")


def test_complex_nifti_is_refused(tmp_path):
    geom = oblique_geometry()
    data = random_cine()
    img = nib.Nifti1Image(np.transpose(data, (3, 2, 1, 0)).astype(np.complex64) * (1 + 1j), geom.to_nifti_affine())
    nib.save(img, str(tmp_path / "c.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy ComplexWarning: refused before any cast
        with pytest.raises(InputError, match="complex-valued image .*: give a magnitude image") as e:
            load_cine(tmp_path / "c.nii.gz")
    assert e.value.path.endswith("c.nii.gz")


def test_incomplete_acdc_or_ukbb_folder_names_the_missing_file(shared_data, tmp_path):
    _, folder = _acdc_patient001_images(shared_data, tmp_path)  # frames, no Info.cfg
    with pytest.raises(InputError, match="not found: .*ACDC images .*no Info.cfg") as e:
        quiet_load(folder)
    assert e.value.path == str(folder / "Info.cfg") and "no DICOM" not in str(e.value)
    ukbb = tmp_path / "1000003"
    ukbb.mkdir()
    _write_frame(ukbb / "sa_ED.nii.gz", random_cine((1, 4, 6, 7))[0], oblique_geometry())
    with pytest.raises(InputError, match="UK Biobank subject folder with sa_ED.nii.gz but no sa_ES.nii.gz") as e:
        quiet_load(ukbb)
    assert e.value.path == str(ukbb / "sa_ES.nii.gz") and "no DICOM" not in str(e.value)


def _dicomdir(path: Path) -> None:
    """A minimal DICOMDIR (Media Storage Directory Storage): a whole DICOM object that is no image."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.FileSetID = "TEST"
    ds.save_as(str(path), enforce_file_format=True)


def test_unreadable_dicom_files_are_named(shared_data, tmp_path):
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(2) for t in range(20)]
    ok = tmp_path / "ok"
    _copy_dicoms(src, ok, names)
    # junk beside a cine stays quietly ignored
    (ok / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (ok / "notes.txt").write_text("scanned on Tuesday\n")
    (ok / "Thumbs.db").write_bytes(bytes(range(256)) * 4)
    (ok / "report.pdf").write_bytes(b"%PDF-1.4\n" + bytes(300))
    _dicomdir(ok / "DICOMDIR")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeepStrainWarning)
        reference = load_cine(ok)
    assert reference.data.shape == (20, 2, 256, 256)

    # a truncated image of the cine: the series then fails, and the error names the file
    broken = tmp_path / "broken"
    _copy_dicoms(src, broken, names)
    (broken / "30.dcm").write_bytes((src / "30.dcm").read_bytes()[:400])
    with pytest.raises(InputError, match="different numbers of frames") as e:
        quiet_load(broken)
    assert "30.dcm (a DICOM image without geometry or pixel data (truncated file?))" in str(e.value)
    # an empty file and a truncated one that are not needed: the series loads, with a warning naming them
    extra = tmp_path / "extra"
    _copy_dicoms(src, extra, names)
    (extra / "50.dcm").write_bytes(b"")
    (extra / "IM0051").write_bytes((src / "51.dcm").read_bytes()[:400])
    with pytest.warns(DeepStrainWarning, match=r"2 file\(s\) that look like DICOM could not be read") as record:
        cine = load_cine(extra)
    message = " ".join(str(w.message) for w in record)
    assert "50.dcm (empty file (0 bytes))" in message and "IM0051 (" in message
    np.testing.assert_array_equal(cine.data, reference.data)
    assert any("50.dcm" in w for w in cine.warnings)
    # no image at all: the "no DICOM images" error names them too; a broken file given directly is named
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "50.dcm").write_bytes(b"")
    with pytest.raises(InputError, match=r"no DICOM images found.*50\.dcm \(empty file"):
        quiet_load(lone)
    with pytest.raises(InputError, match="empty file") as e:
        quiet_load(lone / "50.dcm")
    assert e.value.path.endswith("50.dcm")


def test_dicom_frames_missing_from_every_slice_are_warned(shared_data, tmp_path):
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(2) for t in range(20) if t != 9]  # phase 10 missing everywhere
    _copy_dicoms(src, tmp_path / "gap", names)
    with pytest.warns(DeepStrainWarning, match="19 frames per slice found, but the header's CardiacNumberOfImages "
                                               "says 20"):
        cine = load_cine(tmp_path / "gap")
    assert cine.n_frames == 19


def test_dicom_frames_without_trigger_time_are_ordered_per_slice_never_by_file_name(shared_data, tmp_path):
    """Frames are ordered by TriggerTime per slice; a slice whose images lack some is ordered by
    InstanceNumber, checked against the trigger times present; the timing comes from the complete
    slices; the ordering note stays when --heart-rate gives the timing. Images with neither, an
    InstanceNumber that is not an integer where it is needed, or an InstanceNumber order that the
    trigger times contradict are refused, naming the slice: file names never order frames."""
    src = shared_data / "sunnybrook" / "SCD0000101"
    names = [z * 20 + t + 1 for z in range(3) for t in range(20)]
    _copy_dicoms(src, tmp_path / "ref", names)
    ref = quiet_load(tmp_path / "ref")

    def no_trigger_on_slice_1(ds, n):
        if (n - 1) // 20 == 1 and n % 3 == 0:
            del ds.TriggerTime

    _edited_copies(src, names, tmp_path / "partial", no_trigger_on_slice_1)
    with pytest.warns(DeepStrainWarning, match=r"without TriggerTime in 1 of 3 slices .* ordered by InstanceNumber"):
        cine = load_cine(tmp_path / "partial")
    np.testing.assert_array_equal(cine.data, ref.data)
    np.testing.assert_allclose(cine.times_ms, ref.times_ms, rtol=0.03)  # from slices 0 and 2 (37-41 ms apart)
    with pytest.warns(DeepStrainWarning) as caught:
        load_cine(tmp_path / "partial", heart_rate_bpm=79)
    assert any("ordered by InstanceNumber" in str(w.message) for w in caught)

    def scrambled(ds, n):  # InstanceNumber reversed within each slice
        z, t = divmod(n - 1, 20)
        ds.InstanceNumber = z * 20 + (20 - t)

    def scrambled_partial(ds, n):
        scrambled(ds, n)
        no_trigger_on_slice_1(ds, n)

    _edited_copies(src, names, tmp_path / "contradict", scrambled_partial)
    with pytest.raises(InputError, match=r"slice at .* cannot be ordered: .* InstanceNumber order .* disagrees"):
        quiet_load(tmp_path / "contradict")
    _edited_copies(src, names, tmp_path / "scrambled", scrambled)  # every TriggerTime there: they decide
    np.testing.assert_array_equal(quiet_load(tmp_path / "scrambled").data, ref.data)

    def nothing(ds, n):
        del ds.TriggerTime
        del ds.InstanceNumber

    _edited_copies(src, names, tmp_path / "nothing", nothing)
    with pytest.raises(InputError, match=r"cannot be ordered: 20 of its images have neither a TriggerTime nor an "
                                         r"integer InstanceNumber .*file names is not trusted"):
        quiet_load(tmp_path / "nothing")

    def bad_number(ds, n):
        if n == 30:  # written as text: pydicom refuses such an IS value when it is set
            ds.add_new(0x00200013, "LO", "A0")

    _edited_copies(src, names, tmp_path / "badnumber", bad_number)  # a tie-breaker only: read as none
    np.testing.assert_array_equal(quiet_load(tmp_path / "badnumber").data, ref.data)
