"""Volumes, EF and mass by voxel counting; ED/ES from the LV volume curve; ACDC cross-check."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from deepstrain.cine import Geometry
from deepstrain.volumetrics import (INDEXED, body_surface_area, find_ed_es, label_volumes_ml, slice_volumes_ml, volumetrics,
                                    voxel_volume_ml)


def _labels():
    lab = np.zeros((3, 4, 10, 10), dtype=np.uint8)
    lab[0, :, 2:8, 2:8] = 2
    lab[0, :, 3:7, 3:7] = 3  # 16 px x 4 slices = 64 LV voxels, 80 myo
    lab[1, :, 3:6, 3:6] = 3  # 36 LV
    lab[2, :, 3:7, 3:6] = 3  # 48 LV
    lab[:, :, 0, :] = 1  # 10 px x 4 = 40 RV every frame
    lab[1, :, 1, :5] = 1  # RV larger at frame 1 (+20)
    return lab


def test_voxel_volume_uses_spacing_and_direction():
    rot = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert voxel_volume_ml(Geometry((8.0, 1.25, 1.5), direction=rot)) == pytest.approx(0.015)


def test_label_volumes_per_frame():
    geo = Geometry((10.0, 2.0, 1.5))  # 30 mm^3 = 0.03 ml
    v = label_volumes_ml(_labels(), geo)
    np.testing.assert_allclose(v["lv"], np.array([64, 36, 48]) * 0.03)
    np.testing.assert_allclose(v["myo"], np.array([80, 0, 0]) * 0.03)
    np.testing.assert_allclose(v["rv"], np.array([40, 60, 40]) * 0.03)
    one = label_volumes_ml(_labels()[0], geo)
    assert one["lv"].shape == (1,) and one["lv"][0] == pytest.approx(64 * 0.03)
    # signed integer labels give the same counts
    np.testing.assert_allclose(label_volumes_ml(_labels().astype(np.int16), geo)["rv"], v["rv"])


def test_slice_volumes_per_slice_of_one_frame():
    geo = Geometry((10.0, 2.0, 1.5))
    lab = _labels()[1].copy()
    lab[3] = 0  # the last slice empty
    s = slice_volumes_ml(lab, geo)
    np.testing.assert_allclose(s["lv"], np.array([9, 9, 9, 0]) * 0.03)
    np.testing.assert_allclose(s["rv"], np.array([15, 15, 15, 0]) * 0.03)
    for key, total in label_volumes_ml(lab, geo).items():
        assert s[key].sum() == pytest.approx(total[0])
    with pytest.raises(ValueError, match="one frame"):
        slice_volumes_ml(_labels(), geo)


def test_find_ed_es_and_ties():
    assert find_ed_es(np.array([100.0, 80, 50, 60, 90])) == (0, 2)
    assert find_ed_es(np.array([90.0, 100, 50, 100, 50])) == (1, 2)  # earliest of equal values
    with pytest.raises(ValueError):
        find_ed_es(np.array([5.0, 5.0]))
    with pytest.raises(ValueError):
        find_ed_es(np.array([5.0, np.nan, 3.0]))


def test_volumetrics_values():
    geo = Geometry((10.0, 2.0, 1.5))
    v = volumetrics(_labels(), geo, ed=0, es=1)
    assert v["lv_edv_ml"] == pytest.approx(64 * 0.03)
    assert v["lv_esv_ml"] == pytest.approx(36 * 0.03)
    assert v["lv_sv_ml"] == pytest.approx(28 * 0.03)
    assert v["lv_ef_percent"] == pytest.approx(100 * 28 / 64)
    assert v["lv_mass_g"] == pytest.approx(80 * 0.03 * 1.05)
    assert v["rv_edv_ml"] == pytest.approx(40 * 0.03) and v["rv_esv_ml"] == pytest.approx(60 * 0.03)
    assert v["rv_ef_percent"] == pytest.approx(-50.0)
    lab = _labels()
    lab[lab == 1] = 0
    assert volumetrics(lab, geo, 0, 1)["rv_ef_percent"] is None
    with pytest.raises(ValueError):
        volumetrics(lab, geo, 0, 3)


def test_body_surface_area_mosteller():
    # Mosteller's own worked value: 180 cm, 80 kg -> sqrt(14400 / 3600) = 2.0 m^2
    assert body_surface_area(180.0, 80.0) == pytest.approx(2.0)
    assert body_surface_area(164.0, 59.0) == pytest.approx(np.sqrt(164 * 59 / 3600))
    assert body_surface_area(None, 80.0) is None and body_surface_area(180.0, None) is None
    with pytest.raises(ValueError, match="positive"):
        body_surface_area(0.0, 80.0)


def test_indexed_volumes_and_cardiac_output():
    geo = Geometry((10.0, 2.0, 1.5))
    plain = volumetrics(_labels(), geo, ed=0, es=1)
    assert all(plain[k] is None for k in INDEXED) and plain["lv_cardiac_output_l_per_min"] is None
    assert plain["rv_sv_ml"] == pytest.approx((40 - 60) * 0.03)
    v = volumetrics(_labels(), geo, ed=0, es=1, bsa_m2=1.6, heart_rate_bpm=75.0)
    for key, of in INDEXED.items():
        assert v[key] == pytest.approx(plain[of] / 1.6), key
    assert v["lv_cardiac_output_l_per_min"] == pytest.approx(28 * 0.03 * 75 / 1000)
    assert v["lv_cardiac_index_l_per_min_per_m2"] == pytest.approx(28 * 0.03 * 75 / 1000 / 1.6)
    hr_only = volumetrics(_labels(), geo, ed=0, es=1, heart_rate_bpm=60.0)
    assert hr_only["lv_cardiac_output_l_per_min"] == pytest.approx(28 * 0.03 * 60 / 1000)
    assert hr_only["lv_cardiac_index_l_per_min_per_m2"] is None
    with pytest.raises(ValueError, match="bsa_m2"):
        volumetrics(_labels(), geo, 0, 1, bsa_m2=0.0)


def _independent_acdc_volumes(path):
    """Plain counting straight from the file: count of each label x product of pixdim (ml)."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    vox = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {name: np.count_nonzero(data == v) * vox for name, v in (("lv", 3), ("myo", 2), ("rv", 1))}


@pytest.mark.parametrize("patient", ["patient001", "patient045", "patient081"])
def test_acdc_volumetrics_match_independent_counting(shared_data, patient):
    from deepstrain.io import load_cine
    from deepstrain.pipeline import compute

    folder = shared_data / "acdc" / "training" / patient
    with warnings.catch_warnings():  # ACDC carries no timing: warned by the reader, not our concern here
        warnings.simplefilter("ignore")
        cine = load_cine(folder)
    labels = np.stack([cine.labels[i] for i in range(cine.n_frames)])
    a = compute(cine, labels, None)
    gts = sorted(folder.glob("*_gt.nii.gz"))
    ed_file = [g for g in gts if int(g.name.split("frame")[1][:2]) - 1 == cine.frame_numbers[cine.ed]][0]
    es_file = [g for g in gts if int(g.name.split("frame")[1][:2]) - 1 == cine.frame_numbers[cine.es]][0]
    ed, es = _independent_acdc_volumes(ed_file), _independent_acdc_volumes(es_file)
    v = a.report["volumetrics"]
    assert abs(v["lv_edv_ml"] - ed["lv"]) < 0.1
    assert abs(v["lv_esv_ml"] - es["lv"]) < 0.1
    assert abs(v["rv_edv_ml"] - ed["rv"]) < 0.1
    assert abs(v["rv_esv_ml"] - es["rv"]) < 0.1
    assert abs(v["lv_mass_g"] - 1.05 * ed["myo"]) < 0.1
    assert 10 < v["lv_ef_percent"] < 90
